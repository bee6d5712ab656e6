-- Resolve a waiting vertex (wait, call): enqueue the resolution message (kind 'e',
-- the event's, signal's or child run's data) on the run's stream, where the claim
-- lets the first resolution of the vertex's attempt through (see claim.lua). KEYS[1]
-- is a stream of the run's partition. ARGV: uid, addr, kind, data, now, keep.
-- keep '1' (a signal): also keep the data in sg:<addr> (the first signal wins), which
-- the wait takes when it starts: a signal may come before the run reaches its wait.
-- A paused run parks the message (applied at resume). Nothing is enqueued for a
-- vertex that has not started (attempt 0). Answers 1 when taken, 0 when the run
-- ended or the vertex has its output already, -1 when there is no such run.
-- Applying it twice adds a second message that the claim's gate drops.
local uid, addr, kind, data, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local run = runkey(uid)
local h = redis.call('HMGET', run, 'status', 'o:' .. addr, 'a:' .. addr)
local status = h[1]
if not status then return -1 end
if TERMINAL[status] or h[2] then return 0 end
if keep == '1' then redis.call('HSETNX', run, 'sg:' .. addr, data) end
if (tonumber(h[3]) or 0) > 0 then
  local s = redis.call('HGET', run, 's:' .. addr)
  enqueue(run, uid, status, addr, kind, data, runq(run))
  -- parking marks the vertex parked; while it waits its status stays 'waiting'
  if status == 'paused' and s then redis.call('HSET', run, 's:' .. addr, s) end
end
return 1
