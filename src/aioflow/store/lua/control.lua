-- Pause, resume or stop a run. ARGV: uid, action, now, ttl.
-- Answers {'ok', new status} or {'err', current status or ''}.
local uid, action, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local run = runkey(uid)
local status = redis.call('HGET', run, 'status')
if not status then return {'err', ''} end
if action == 'pause' then
  if status ~= 'running' and status ~= 'pending' then return {'err', status} end
  redis.call('HSET', run, 'status', 'paused', 'was', status)
  return {'ok', 'paused'}
elseif action == 'resume' then
  if status ~= 'paused' then return {'err', status} end
  local back = redis.call('HGET', run, 'was') or 'running'
  redis.call('HSET', run, 'status', back)
  local p = pre .. ':p:' .. uid
  local stream = runq(run)
  for _, m in ipairs(redis.call('LRANGE', p, 0, -1)) do
    local t = cmsgpack.unpack(m)
    xadd(uid, t[1], t[2], t[3], stream)
  end
  redis.call('DEL', p)
  return {'ok', back}
elseif action == 'stop' then
  if TERMINAL[status] then return {'err', status} end
  finish(run, uid, 'stopped', '', '', now, ttl)
  return {'ok', 'stopped'}
end
return {'err', status}
