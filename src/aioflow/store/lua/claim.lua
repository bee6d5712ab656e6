-- Start a batch of delivered messages. ARGV: consumer, now, max_deliveries, ttl,
-- version (the worker's version of this flow), then
-- per message: id uid addr kind marker check nfetch field...
-- check: '1' to check max_deliveries (a reclaimed message), else '0'; for a timer
-- (kind 't') followed by ':<attempt>', the attempt it was set for.
-- Kinds 'e' and 't' resolve a waiting vertex (wait, sleep, call): they count no
-- attempt, a timer of another attempt is stale ('dup'), and only one resolution
-- passes per attempt: the gate wr:<addr> holds '<attempt>:<message id>' of the one
-- that did (its redelivery passes again). A resolution of a vertex not started
-- (attempt 0: a signal ahead of its wait, or a vertex a retry re-enqueued) is 'dup'.
-- Answers per message: {'go', attempt, fetched...} | {'drop'} | {'dup'} | {'park'}
-- | {'dead', 'failed' when that failed the run, else ''}
-- | {'other', version}: the run is pinned to another version; the message is parked
-- for the workers of that version (see worker/parking.py)
local consumer, now, maxdel, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local version = ARGV[5]
local out = {}
local i = 6

-- Park a message for the pseudo-consumer of its version, undoing this delivery's count.
local function park_other(id, pinned)
  local p = redis.call('XPENDING', q, GROUP, id, id, 1)
  local count = 0
  if p[1] then count = math.max(tonumber(p[1][4]) - 1, 0) end
  redis.call('XCLAIM', q, GROUP, 'v:' .. pinned, 0, id, 'RETRYCOUNT', count, 'JUSTID')
end

while i <= #ARGV do
  local id, uid, addr, kind, marker, check = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local n = tonumber(ARGV[i+6])
  local base = i + 6
  i = base + n + 1
  local run = runkey(uid)
  local res = nil
  local head = redis.call('HMGET', run, 'status', marker, 'v', 'a:' .. addr)
  local status, pinned = head[1], head[3]
  if pinned and pinned ~= version and kind ~= 'f' and status and not TERMINAL[status]
      and not head[2] then
    park_other(id, pinned)
    res = {'other', pinned}
  elseif kind == '?' then
    dead_letter(id, uid, addr, kind, 'undecodable message', 0, now, ttl)
    res = {'dead'}
  else
    if (not status) or (TERMINAL[status] and kind ~= 'f') then
      redis.call('XACK', q, GROUP, id)
      res = {'drop'}
    elseif head[2] then
      redis.call('XACK', q, GROUP, id)
      res = {'dup'}
    elseif status == 'paused' and kind ~= 'f' then
      local e = redis.call('XRANGE', q, id, id)
      local data = ''
      if e[1] then data = fields_to_map(e[1][2])['d'] or '' end
      enqueue(run, uid, status, addr, kind, data)
      redis.call('XACK', q, GROUP, id)
      res = {'park'}
    else
      local tattempt = nil
      if kind == 't' then
        local c, a = string.match(check, '^(%d):(%d+)$')
        check, tattempt = c, tonumber(a)
      end
      if check == '1' and maxdel > 0 then
        local p = redis.call('XPENDING', q, GROUP, id, id, 1)
        if p[1] and tonumber(p[1][4]) > maxdel then
          local failed = dead_letter(id, uid, addr, kind,
            'delivered ' .. p[1][4] .. ' times (max_deliveries=' .. maxdel ..
            '): the worker running it died or stalled each time', tonumber(p[1][4]), now, ttl)
          res = {'dead', failed and 'failed' or ''}
        end
      end
      if not res then
        -- t: 'started queued_ms' (queued: the stream entry id's time); a group's close
        -- keeps the times of its open (the field is then set twice, to the same status)
        local tf, tv = 't:' .. addr, now .. ' ' .. string.match(id, '^%d+')
        -- closing a group ('c') is the second message of one execution, not an attempt:
        -- it keeps the count (written again, unchanged) and the times of its open
        local attempt
        if kind == 'c' then
          tf, tv = 's:' .. addr, 'running'
          attempt = tonumber(head[4]) or 1
        elseif kind == 'e' or kind == 't' then
          tf, tv = 's:' .. addr, 'running'
          attempt = tonumber(head[4]) or 0
          local gate = redis.call('HGET', run, 'wr:' .. addr)
          local ga, gid = nil, nil
          if gate then ga, gid = string.match(gate, '^(%d+):(.*)$') end
          if attempt == 0 or (kind == 't' and tattempt ~= attempt)
              or (ga and tonumber(ga) == attempt and gid ~= id) then
            redis.call('XACK', q, GROUP, id)
            res = {'dup'}
          else
            redis.call('HSET', run, 'wr:' .. addr, attempt .. ':' .. id)
          end
        else
          attempt = (tonumber(head[4]) or 0) + 1
        end
        if res then  -- a resolution that lost
        elseif kind ~= 'f' and status == 'pending' then
          redis.call('HSET', run, 'status', 'running', 'started', now, 's:' .. addr, 'running',
            tf, tv, 'a:' .. addr, attempt)
        else  -- running, or the hooks of a finished run (no status change)
          redis.call('HSET', run, 's:' .. addr, 'running', tf, tv, 'a:' .. addr, attempt)
        end
        if not res then
          res = {'go', attempt}
          if n > 0 then
            local vals = redis.call('HMGET', run, unpack(ARGV, base + 1, base + n))
            for j = 1, n do res[j + 2] = vals[j] end
          end
        end
      end
    end
  end
  out[#out + 1] = res
end
return out
