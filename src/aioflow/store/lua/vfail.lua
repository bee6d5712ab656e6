-- Fail the runs of messages parked for a version no live worker serves (see
-- worker/parking.py). ARGV: pseudo, now, ttl, version_wait, last beat of a worker serving
-- the version (0: none), error message, id...  A run fails once
-- max(last beat, its created time) + version_wait has passed; messages of runs
-- that ended are acked. Answers how many runs failed.
local pseudo, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local wait, last, message = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local failed = 0
for j = 7, #ARGV do
  local id = ARGV[j]
  local p = redis.call('XPENDING', q, GROUP, id, id, 1)
  if p[1] and p[1][2] == pseudo then
    local e = redis.call('XRANGE', q, id, id)
    if not e[1] then
      redis.call('XACK', q, GROUP, id)
    else
      local f = fields_to_map(e[1][2])
      local run = runkey(f['r'] or '')
      local h = redis.call('HMGET', run, 'status', 'created')
      if (not h[1]) or TERMINAL[h[1]] then
        redis.call('XACK', q, GROUP, id)
      elseif tonumber(now) >= math.max(last, tonumber(h[2]) or 0) + wait then
        local err = cjson.encode({vertex = f['a'], type = 'VersionUnavailable', message = message,
          traceback = '', attempts = 0})
        redis.call('HSET', run, 's:' .. f['a'], 'failed')
        finish(run, f['r'], 'failed', 'err', err, now, ttl)
        redis.call('XACK', q, GROUP, id)
        failed = failed + 1
      end
    end
  end
end
if #redis.call('XPENDING', q, GROUP, '-', '+', 1, pseudo) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', q, GROUP, pseudo)
end
return failed
