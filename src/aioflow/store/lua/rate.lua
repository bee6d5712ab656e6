-- A token bucket shared by all workers; see aioflow/worker/limits.py. KEYS[1] is
-- af:rate:{flow:vertex:key}, its own hash tag: a hash (t tokens, ts last refill)
-- and :r, a zset holder -> the time its reserved token is due (ms).
-- ARGV: now (ms), tokens per ms, capacity, holder.
-- Answers 0 (take a token and go) or the ms to wait for the token reserved for holder.
local B, R = KEYS[1], KEYS[1] .. ':r'
local now, per_ms, cap, holder = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local due = redis.call('ZSCORE', R, holder)
if due then
  due = tonumber(due)
  if due <= now + 20 then
    redis.call('ZREM', R, holder)
    return 0
  end
  return math.ceil(due - now)
end
local b = redis.call('HMGET', B, 't', 'ts')
local tokens, ts = tonumber(b[1]) or cap, tonumber(b[2]) or now
if now > ts then tokens = math.min(cap, tokens + (now - ts) * per_ms) else now = ts end
-- a token taken in advance leaves the bucket in debt: waiters are queued in time
tokens = tokens - 1
redis.call('HSET', B, 't', tostring(tokens), 'ts', tostring(now))
local wait = 0
if tokens < 0 then
  wait = math.ceil(-tokens / per_ms)
  redis.call('ZADD', R, now + wait, holder)
  -- reservations never collected (their run was stopped) go after an hour
  redis.call('ZREMRANGEBYSCORE', R, '-inf', now - 3600000)
  redis.call('PEXPIRE', R, wait + 3600000)
end
redis.call('PEXPIRE', B, wait + math.ceil(cap / per_ms) + 60000)
return wait
