-- Global concurrency slots of one (flow, vertex, key); see aioflow/worker/limits.py.
-- KEYS[1] is af:lim:{flow:vertex:key}, its own hash tag; keys used:
--   :h zset holder -> lease expiry (ms), slots taken
--   :r zset holder -> lease expiry (ms), slots reserved for a woken waiter, not yet taken
--   :w zset waiting holder -> arrival number    :n arrival counter
--   :m hash waiting holder -> "<delayed set>\n<its member there>"
--   :t hash holder -> the message id that took the slot (so a late release of an
--      earlier delivery cannot free the slot of a later one)
-- ARGV: op, now (ms), lease (ms), limit, then
--   acquire holder where token  -> {'go', woken} | {'wait', position, woken}
--   wait holder where           -> woken   (register a parked message as waiter)
--   release holder token...     -> woken   (slots taken with that token)
--   unreserve holder...    -> woken   (reservations nobody came for)
--   renew holder...        -> woken
-- woken lists holder, "<delayed set>\n<member>" of each waiter just given a slot: the
-- caller makes it due now in its delayed set (wake.lua), where the mover finds it.
local L = KEYS[1]
local H, R, W, M, N, T = L .. ':h', L .. ':r', L .. ':w', L .. ':m', L .. ':n', L .. ':t'
local op, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local IDLE = 86400000  -- an unused limit vanishes after a day

local function used() return redis.call('ZCARD', H) + redis.call('ZCARD', R) end

-- hand free slots to the oldest waiters, as reservations
local function promote(woken, self)
  while used() < limit do
    local w = redis.call('ZPOPMIN', W)
    if not w[1] then break end
    redis.call('ZADD', R, now + lease, w[1])
    local where = redis.call('HGET', M, w[1])
    redis.call('HDEL', M, w[1])
    if where and w[1] ~= self then
      woken[#woken + 1] = w[1]
      woken[#woken + 1] = where
    end
  end
end

local function touch()
  for _, k in ipairs({H, R, W, M, N, T}) do redis.call('PEXPIRE', k, IDLE) end
end

local expired = redis.call('ZRANGEBYSCORE', H, '-inf', now)
if expired[1] then
  redis.call('ZREM', H, unpack(expired))
  redis.call('HDEL', T, unpack(expired))
end
redis.call('ZREMRANGEBYSCORE', R, '-inf', now)
local woken = {}
if op == 'acquire' then
  local holder, where, token = ARGV[5], ARGV[6], ARGV[7]
  if not (redis.call('ZSCORE', H, holder) or redis.call('ZSCORE', R, holder)) then
    promote(woken, holder)
  end
  -- held already (a redelivery), reserved for it (a woken waiter), or free
  if redis.call('ZREM', R, holder) == 1 or redis.call('ZSCORE', H, holder) or used() < limit then
    redis.call('ZADD', H, now + lease, holder)
    redis.call('HSET', T, holder, token)
    redis.call('ZREM', W, holder)
    redis.call('HDEL', M, holder)
    touch()
    return {'go', woken}
  end
  -- no slot: the caller parks the message, then registers it ('wait')
  touch()
  return {'wait', redis.call('ZRANK', W, holder) or redis.call('ZCARD', W), woken}
elseif op == 'wait' then
  -- registered only once the message sleeps in its delayed set, so that a wake-up
  -- always finds it there; a slot freed meanwhile goes to it (or an older waiter)
  local holder, where = ARGV[5], ARGV[6]
  if not redis.call('ZSCORE', W, holder) then
    redis.call('ZADD', W, redis.call('INCR', N), holder)
  end
  redis.call('HSET', M, holder, where)
elseif op == 'release' then
  for j = 5, #ARGV, 2 do
    if redis.call('HGET', T, ARGV[j]) == ARGV[j + 1] then
      redis.call('ZREM', H, ARGV[j])
      redis.call('HDEL', T, ARGV[j])
    end
  end
elseif op == 'unreserve' then
  redis.call('ZREM', R, unpack(ARGV, 5))
elseif op == 'renew' then
  for j = 5, #ARGV do
    redis.call('ZADD', H, 'XX', now + lease, ARGV[j])
  end
end
promote(woken, '')
touch()
return woken
