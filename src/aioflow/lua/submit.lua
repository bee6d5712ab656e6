-- Create a run and enqueue its entry vertices (or delay them). ARGV: uid, now, input,
-- options, due (0 = now), nentries, entry..., then hooks ('' or '1'), callback url ('' or url),
-- traceparent, pinned version ('' = none), priority ('', 'h' or 'l'; KEYS[1] is
-- then that priority's stream).
-- Answers 1 when created, 0 when a run with this id exists already.
local uid, now, input, opts, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local run = runkey(uid)
if redis.call('EXISTS', run) == 1 then return 0 end
redis.call('HSET', run, 'status', 'pending', 'created', now, 'input', input, 'opts', opts)
redis.call('ZADD', pre .. ':i', now, uid)
local last = 6 + tonumber(ARGV[6])
if ARGV[last + 1] == '1' then redis.call('HSET', run, 'hooks', '1') end
if ARGV[last + 2] and ARGV[last + 2] ~= '' then redis.call('HSET', run, 'cbu', ARGV[last + 2]) end
if ARGV[last + 3] and ARGV[last + 3] ~= '' then redis.call('HSET', run, 'tp', ARGV[last + 3]) end
if ARGV[last + 4] and ARGV[last + 4] ~= '' then redis.call('HSET', run, 'v', ARGV[last + 4]) end
if ARGV[last + 5] and ARGV[last + 5] ~= '' then redis.call('HSET', run, 'pr', ARGV[last + 5]) end
for j = 7, last do
  if due > 0 then
    redis.call('ZADD', pre .. ':z', due, uid .. '\n' .. ARGV[j] .. '\nn\n' .. j .. '\n' .. input)
  else
    xadd(uid, ARGV[j], 'n', input)
  end
end
return 1
