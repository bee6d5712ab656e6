-- Apply a batch of vertex completions atomically. ARGV: consumer, now, ttl, then per
-- completion: id uid marker mode value vaddr vstatus nops, then nops x (op a b c).
-- mode 'c' stores value under marker (the vertex is done); mode 'r' only checks it.
-- ops: E addr kind data   enqueue
--      J addr kind indeg  count a parent in; enqueue when all are in
--      G group            count a scope of the group done; enqueue its close when all are
--      F                  the run completed with value
--      X err              the run failed with err (JSON)
--      S field value      set a field of the run
--      D due member       delay: add a message to the delayed set
-- Answers per completion: 'ok' | 'dup' | 'fenced', or 'completed' | 'failed' when it ended
-- the run (e:vaddr records when the vertex's attempt ended). A completion for a run that
-- has already ended changes nothing but the vertex's own fields: 'ok', no op applied.
local consumer, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local ACTIVE = {running = true, pending = true, paused = true}
-- what a late completion may still say of its vertex once the run ended: the outcome of
-- its attempt, never a live status over the 'cancelled' the run's end gave it
local OUTCOME = {completed = true, failed = true}

local function apply(i)
  local id, uid, marker, mode, value = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local vaddr, vstatus = ARGV[i+5], ARGV[i+6]
  local nops = tonumber(ARGV[i+7])
  local run = runkey(uid)
  if id ~= '' then
    local p = redis.call('XPENDING', q, GROUP, id, id, 1)
    if (not p[1]) or p[1][2] ~= consumer then return 'fenced' end
  end
  local head = redis.call('HMGET', run, 'status', marker ~= '' and marker or 'status', 'hooks')
  if marker ~= '' and head[2] then
    if id ~= '' then redis.call('XACK', q, GROUP, id) end
    return 'dup'
  end
  local status = head[1]
  local active = status and ACTIVE[status]
  -- the vertex's own fields: set below, or by finish() in its HSET when this ends the run
  local own = nil
  if status then
    own = {}
    if mode == 'c' then own[1] = marker; own[2] = value end
    if vaddr ~= '' and (active or OUTCOME[vstatus]) then
      own[#own + 1] = 's:' .. vaddr; own[#own + 1] = vstatus
      own[#own + 1] = 'e:' .. vaddr; own[#own + 1] = now
    end
    if #own == 0 then own = nil end
  end
  local ends = false
  if active then
    for j = i + 8, i + 7 + nops * 4, 4 do
      if ARGV[j] == 'F' or ARGV[j] == 'X' then ends = true end
    end
  end
  if own and not ends then
    redis.call('HSET', run, unpack(own))
    own = nil
  end
  local ended = 'ok'
  for j = i + 8, i + 7 + nops * 4, 4 do
    local op, a, b, c = ARGV[j], ARGV[j+1], ARGV[j+2], ARGV[j+3]
    if op == 'S' then
      if status then redis.call('HSET', run, a, b) end
    elseif active then
      if op == 'E' then
        enqueue(run, uid, status, a, b, c)
      elseif op == 'J' then
        if redis.call('HINCRBY', run, 'n:' .. a, 1) == tonumber(c) then
          enqueue(run, uid, status, a, b, '')
        end
      elseif op == 'G' then
        local done = redis.call('HINCRBY', run, 'gc:' .. a, 1)
        if done == tonumber(redis.call('HGET', run, 'gn:' .. a)) then
          enqueue(run, uid, status, a, 'c', '')
        end
      elseif op == 'F' then
        finish(run, uid, 'completed', 'result', value, now, ttl, status, head[3] == '1', own)
        active, ended, own = false, 'completed', nil
      elseif op == 'X' then
        finish(run, uid, 'failed', 'err', a, now, ttl, status, head[3] == '1', own)
        active, ended, own = false, 'failed', nil
      elseif op == 'D' then
        redis.call('ZADD', pre .. ':z', a, b)
      end
    end
  end
  if own then redis.call('HSET', run, unpack(own)) end
  if id ~= '' then redis.call('XACK', q, GROUP, id) end
  return ended
end

local out = {}
local i = 4
while i <= #ARGV do
  out[#out + 1] = apply(i)
  i = i + 8 + tonumber(ARGV[i + 7]) * 4
end
return out
