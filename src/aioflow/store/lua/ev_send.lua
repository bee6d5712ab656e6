-- Sending an event (engine/events.py). KEYS[1] is a key of the event name's hash tag
-- af:{ev:<name>}; every key used derives from that tag, non-greedily (an event key
-- may hold any '}'). The id key af:{ev:<name>}:id:<event id> holds the event's
-- fan-out as JSON {e: stream entry id, k: key, w: [ref, deadline, ...], f: [flow, ...]}
-- and, once done, a: the answer of the send (JSON text).
local ev = string.match(KEYS[1], '^(af:{ev:[^}]*})')
local mode = ARGV[1]

local function entry_data(key, entry)
  local e = redis.call('XRANGE', ev .. ':s:' .. key, entry, entry)
  if e[1] then return fields_to_map(e[1][2])['d'] or '' end
  return false
end

-- 's': ARGV key, event id, data, now_ms, ttl_ms, redo_ms. A new id: keep the event
-- (stream entry id from now_ms, after the last one), remember the id with the
-- waiters and triggers of this moment, add the fan-out to :f (done by another
-- process at now + redo unless marked done first); answers {'new', fan-out JSON}.
-- An id seen: {'dup', its JSON, the event's data while its fan-out is not done}.
if mode == 's' then
  local key, eid, data = ARGV[2], ARGV[3], ARGV[4]
  local now, ttl, redo = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local idk = ev .. ':id:' .. eid
  local seen = redis.call('GET', idk)
  if seen then
    local doc = cjson.decode(seen)
    if doc['a'] then return {'dup', seen} end
    return {'dup', seen, entry_data(doc['k'], doc['e']) or ''}
  end
  local s = ev .. ':s:' .. key
  -- entry ids are the senders' clock (the one runs are created by, so a wait's
  -- since_ms compares with it), kept increasing
  local id = string.format('%.0f', now) .. '-0'
  local last = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)
  if last[1] then
    local lms, lseq = string.match(last[1][1], '^(%d+)-(%d+)$')
    if tonumber(lms) >= now then id = lms .. '-' .. string.format('%.0f', tonumber(lseq) + 1) end
  end
  local r = redis.pcall('XADD', s, id, 'i', eid, 'd', data)
  if type(r) == 'table' and r.err then  -- below an entry trimmed away: Redis picks one
    r = redis.call('XADD', s, '*', 'i', eid, 'd', data)
  end
  redis.call('XTRIM', s, 'MINID', string.format('%.0f', now - ttl))
  redis.call('PEXPIRE', s, ttl)
  local waiters = redis.call('HGETALL', ev .. ':w:' .. key)
  local flows = redis.call('ZRANGE', ev .. ':on', 0, -1)
  local doc = cjson.encode({e = r, k = key, w = waiters, f = flows})
  redis.call('SET', idk, doc, 'PX', ttl)
  if #waiters > 0 or #flows > 0 then
    redis.call('ZADD', ev .. ':f', string.format('%.0f', now + redo), eid)
  end
  return {'new', doc}
end

-- 'd': ARGV event id, answer JSON. The fan-out is done: forget the waiters it
-- delivered to (unless one registered again since: another deadline), store the
-- answer, leave :f.
if mode == 'd' then
  local eid = ARGV[2]
  local idk = ev .. ':id:' .. eid
  local seen = redis.call('GET', idk)
  redis.call('ZREM', ev .. ':f', eid)
  if not seen then return 0 end
  local doc = cjson.decode(seen)
  if doc['a'] then return 0 end
  local w = ev .. ':w:' .. doc['k']
  local refs = doc['w']
  for j = 1, #refs, 2 do
    if redis.call('HGET', w, refs[j]) == refs[j + 1] then redis.call('HDEL', w, refs[j]) end
  end
  doc['a'] = ARGV[3]
  redis.call('SET', idk, cjson.encode(doc), 'KEEPTTL')
  return 1
end

-- 'r': ARGV now_ms, redo_ms, count. Fan-outs due (their sender died): each is taken
-- for another redo_ms and answered as {event id, fan-out JSON or '', data or ''}.
if mode == 'r' then
  local now, redo = tonumber(ARGV[2]), tonumber(ARGV[3])
  local f = ev .. ':f'
  local due = redis.call('ZRANGEBYSCORE', f, '-inf', string.format('%.0f', now), 'LIMIT', 0, ARGV[4])
  local out = {}
  for _, eid in ipairs(due) do
    local seen = redis.call('GET', ev .. ':id:' .. eid)
    if seen then
      redis.call('ZADD', f, string.format('%.0f', now + redo), eid)
      local doc = cjson.decode(seen)
      out[#out + 1] = {eid, seen, entry_data(doc['k'], doc['e']) or ''}
    else
      redis.call('ZREM', f, eid)  -- expired with its event
    end
  end
  return out
end
return redis.error_reply('ev_send: unknown mode ' .. tostring(mode))
