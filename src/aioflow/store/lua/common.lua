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

-- Vertex statuses (s:<addr>) that are final; any other (running, parked, retrying,
-- waiting, queued) is a vertex that would still run. 'stopped': runs of older versions.
local VFINAL = {completed = true, failed = true, cancelled = true, stopped = true}

-- A run that fails or stops ends every vertex it left unfinished, groups included:
-- 'cancelled' (and 'e:' now for one that was running). Only on that path (a completed
-- run has none left), so it costs the per-vertex path nothing. Chunked: Lua's unpack
-- takes at most ~8000 values.
local function cancel_rest(run, now)
  local names = {}
  for _, k in ipairs(redis.call('HKEYS', run)) do
    if string.sub(k, 1, 2) == 's:' and k ~= 's:$final' then names[#names + 1] = k end
  end
  local f = {}
  for c = 1, #names, 1000 do
    local vals = redis.call('HMGET', run, unpack(names, c, math.min(c + 999, #names)))
    for j = 1, #vals do
      local v = vals[j]
      if v and not VFINAL[v] then
        local k = names[c + j - 1]
        f[#f + 1] = k; f[#f + 1] = 'cancelled'
        if v == 'running' then f[#f + 1] = 'e:' .. string.sub(k, 3); f[#f + 1] = now end
      end
    end
  end
  for c = 1, #f, 1000 do
    redis.call('HSET', run, unpack(f, c, math.min(c + 999, #f)))
  end
end

-- End a run: status completed|failed|stopped, store the result or error, expire
-- every key of the run and wake up whoever waits for it. Callers that read them already
-- pass the run's status before this step (prior) and its hooks field (false: none),
-- saving two calls: the parked list can only exist while the run is paused.
-- extra: more field/value pairs to set in the same HSET (the last vertex's own).
-- The status is written after the vertices are ended: a script that fails in between
-- leaves the run unfinished, and running it again completes the transition.
local function finish(run, uid, status, field, value, now, ttl, prior, hooks, extra)
  if status ~= 'completed' then cancel_rest(run, now) end
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
  -- acked last: until then the message stays pending and its next claim does this again
  local failed = false
  if uid ~= '' then
    local run = runkey(uid)
    local status = redis.call('HGET', run, 'status')
    if status and not TERMINAL[status] then
      local err = cjson.encode({vertex = addr, type = 'DeadLetter', message = reason,
        traceback = '', attempts = deliveries})
      finish(run, uid, 'failed', 'err', err, now, ttl, nil, nil, {'s:' .. addr, 'failed'})
      failed = true
    end
  end
  redis.call('XACK', q, GROUP, id)
  return failed
end
