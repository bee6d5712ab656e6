-- An event's waiters (engine/events.py). KEYS[1] is a key of the event name's hash
-- tag af:{ev:<name>} (its stream of kept events for the key); every key used derives
-- from that tag, non-greedily: an event key may hold any '}'.
-- ARGV: mode, key, ref, then for mode 'w': deadline_ms (0: none), since_ms ('': do
-- not look), now_ms, ttl_ms.
-- 'w': answers the first kept event of (name, key) sent at or after since_ms as
--      {event id, data}, recording nothing; else records ref as waiting and answers 0.
-- 'f': forgets ref (resolved, timed out, cancelled); answers 0.
local ev = string.match(KEYS[1], '^(af:{ev:[^}]*})')
local mode, key, ref = ARGV[1], ARGV[2], ARGV[3]
local w = ev .. ':w:' .. key
if mode == 'f' then
  redis.call('HDEL', w, ref)
  return 0
end
local deadline, since, now, ttl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
if since ~= '' then
  local e = redis.call('XRANGE', ev .. ':s:' .. key, since, '+', 'COUNT', 1)
  if e[1] then
    local f = fields_to_map(e[1][2])
    return {f['i'] or '', f['d'] or ''}
  end
end
redis.call('HSET', w, ref, ARGV[4])
-- kept past the last deadline; a wait with none for the event's ttl
local keep = ttl
if deadline > 0 then keep = math.max(deadline - now + 60000, 1000) end
if redis.call('PTTL', w) < keep then redis.call('PEXPIRE', w, string.format('%.0f', keep)) end
return 0
