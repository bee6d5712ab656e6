-- Move due delayed messages into the stream. ARGV: now, limit.
-- Answers {moved, score of the next delayed message or -1}.
local now, limit = ARGV[1], ARGV[2]
local z = pre .. ':z'
local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, limit)
for _, m in ipairs(due) do
  -- member: uid \n addr \n kind \n nonce \n data
  local a = string.find(m, '\n', 1, true)
  local b = string.find(m, '\n', a + 1, true)
  local c = string.find(m, '\n', b + 1, true)
  local d = string.find(m, '\n', c + 1, true)
  local uid = string.sub(m, 1, a - 1)
  local run = runkey(uid)
  local status = redis.call('HGET', run, 'status')
  if status and not TERMINAL[status] then
    enqueue(run, uid, status, string.sub(m, a + 1, b - 1), string.sub(m, b + 1, c - 1),
      string.sub(m, d + 1), runq(run))
  end
  redis.call('ZREM', z, m)
end
local nxt = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, nxt[2]} end
return {#due, '-1'}
