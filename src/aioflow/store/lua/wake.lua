-- Wake a message waiting for a concurrency slot (see aioflow/worker/limits.py): make its
-- member of the delayed set due now. KEYS[1] is the partition's delayed set
-- af:{flow:p}:z. ARGV: now, member (uid \n addr \n kind \n nonce \n data).
-- Answers 1 if woken, 0 if nobody will come for the slot: the member is gone (it
-- came back by itself), its run is over (the member goes too) or paused (the
-- message joins the run's parked ones, which resume re-enqueues).
local now, m = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', q, m) then return 0 end
local a = string.find(m, '\n', 1, true)
local uid = string.sub(m, 1, a - 1)
local run = runkey(uid)
local status = redis.call('HGET', run, 'status')
if (not status) or TERMINAL[status] then
  redis.call('ZREM', q, m)
  return 0
end
if status == 'paused' then
  local b = string.find(m, '\n', a + 1, true)
  local c = string.find(m, '\n', b + 1, true)
  local d = string.find(m, '\n', c + 1, true)
  enqueue(run, uid, status, string.sub(m, a + 1, b - 1), string.sub(m, b + 1, c - 1),
    string.sub(m, d + 1))
  redis.call('ZREM', q, m)
  return 0
end
redis.call('ZADD', q, now, m)
return 1
