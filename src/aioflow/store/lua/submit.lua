-- Create a run and enqueue its entry vertices (or delay them). ARGV: uid, now, input,
-- options, due (0 = now), nentries, entry..., then hooks ('' or '1'), callback url ('' or url),
-- traceparent, pinned version ('' = none), priority ('', 'h' or 'l'; KEYS[1] is
-- then that priority's stream).
-- Answers 1 when created, 0 when a run with this id exists already.
local uid, now, input, opts, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local run = runkey(uid)
if redis.call('EXISTS', run) == 1 then return 0 end
local last = 6 + tonumber(ARGV[6])
-- one HSET for the run and whichever optional fields it has
local fields = {'status', 'pending', 'created', now, 'input', input, 'opts', opts}
if ARGV[last + 1] == '1' then fields[#fields + 1] = 'hooks'; fields[#fields + 1] = '1' end
for k, name in ipairs({'cbu', 'tp', 'v', 'pr'}) do
  local v = ARGV[last + 1 + k]
  if v and v ~= '' then fields[#fields + 1] = name; fields[#fields + 1] = v end
end
redis.call('HSET', run, unpack(fields))
redis.call('ZADD', pre .. ':i', now, uid)
for j = 7, last do
  if due > 0 then
    redis.call('ZADD', pre .. ':z', due, uid .. '\n' .. ARGV[j] .. '\nn\n' .. j .. '\n' .. input)
  else
    xadd(uid, ARGV[j], 'n', input)
  end
end
return 1
