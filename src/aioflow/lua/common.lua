-- Redis 7 has sharded pub/sub (and tells Lua its version); 6.2 has neither.
local PUBLISH_DONE = redis.REDIS_VERSION_NUM and 'SPUBLISH' or 'PUBLISH'

-- Shared prelude: KEYS[1] is a stream af:{flow:p}:q (or :qh, :ql for priorities);
-- every other key is derived from its prefix and so lives in the same Cluster slot.
local q = KEYS[1]
local pre = string.match(q, '^(.*}):') or q
local GROUP = 'workers'
local TERMINAL = {completed = true, failed = true, stopped = true}

local function runkey(uid) return pre .. ':r:' .. uid end

-- The stream of a run's priority (field pr: 'h', 'l' or none). Scripts started by a
-- message of the run already run on it (q); the others ask.
local function runq(run) return pre .. ':q' .. (redis.call('HGET', run, 'pr') or '') end

local function xadd(uid, addr, kind, data, stream)
  local f = {'r', uid, 'a', addr}
  if kind ~= 'n' and kind ~= '' then f[#f + 1] = 'k'; f[#f + 1] = kind end
  if data ~= '' then f[#f + 1] = 'd'; f[#f + 1] = data end
  redis.call('XADD', stream or q, '*', unpack(f))
end

-- Enqueue a vertex message (on stream, default q), or park it when the run is paused.
local function enqueue(run, uid, status, addr, kind, data, stream)
  if status == 'paused' then
    redis.call('RPUSH', pre .. ':p:' .. uid, cmsgpack.pack({addr, kind, data}))
    redis.call('HSET', run, 's:' .. addr, 'parked')
  else
    xadd(uid, addr, kind, data, stream)
  end
end

-- End a run: status completed|failed|stopped, store the result or error, expire
-- every key of the run and wake up whoever waits for it. Callers that read them already
-- pass the run's status before this step (prior) and its hooks field (false: none),
-- saving two calls: the parked list can only exist while the run is paused.
-- extra: more field/value pairs to set in the same HSET (the last vertex's own).
local function finish(run, uid, status, field, value, now, ttl, prior, hooks, extra)
  local f = extra or {}
  f[#f + 1] = 'status'; f[#f + 1] = status; f[#f + 1] = 'ended'; f[#f + 1] = now
  if field ~= '' then f[#f + 1] = field; f[#f + 1] = value end
  redis.call('HSET', run, unpack(f))
  redis.call('PEXPIRE', run, ttl)
  if prior == nil or prior == 'paused' then redis.call('DEL', pre .. ':p:' .. uid) end
  if hooks == nil then hooks = redis.call('HEXISTS', run, 'hooks') == 1 end
  -- flow hooks and callbacks run once, in a worker, after the run ended
  if hooks then xadd(uid, '$final', 'f', '', runq(run)) end
  local payload = value
  if #payload > 65536 then payload = '' end
  -- sharded on Redis 7+ (delivered by the run's own shard on a cluster)
  redis.call(PUBLISH_DONE, pre .. ':done', uid .. '\n' .. status .. '\n' .. payload)
end

local function fields_to_map(flat)
  local m = {}
  for j = 1, #flat, 2 do m[flat[j]] = flat[j + 1] end
  return m
end

-- Move a message to the dead-letter stream and fail its run, in one step. Answers
-- whether that ended the run.
local function dead_letter(id, uid, addr, kind, reason, deliveries, now, ttl)
  local e = redis.call('XRANGE', q, id, id)
  local data = ''
  if e[1] then data = fields_to_map(e[1][2])['d'] or '' end
  redis.call('XADD', pre .. ':dlq', 'MAXLEN', '~', '10000', '*', 'id', id, 'r', uid, 'a', addr,
    'k', kind, 'd', data, 'reason', reason, 'deliveries', tostring(deliveries), 'at', now)
  redis.call('XACK', q, GROUP, id)
  if uid ~= '' then
    local run = runkey(uid)
    local status = redis.call('HGET', run, 'status')
    if status and not TERMINAL[status] then
      local err = cjson.encode({vertex = addr, type = 'DeadLetter', message = reason,
        traceback = '', attempts = deliveries})
      redis.call('HSET', run, 's:' .. addr, 'failed')
      finish(run, uid, 'failed', 'err', err, now, ttl)
      return true
    end
  end
  return false
end
