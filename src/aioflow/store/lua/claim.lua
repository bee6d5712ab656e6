-- Start a batch of delivered messages. ARGV: consumer, now, max_deliveries, ttl,
-- version (the worker's version of this flow), then
-- per message: id uid addr kind marker check nfetch field...
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
        else
          attempt = (tonumber(head[4]) or 0) + 1
        end
        if kind ~= 'f' and status == 'pending' then
          redis.call('HSET', run, 'status', 'running', 'started', now, 's:' .. addr, 'running',
            tf, tv, 'a:' .. addr, attempt)
        else  -- running, or the hooks of a finished run (no status change)
          redis.call('HSET', run, 's:' .. addr, 'running', tf, tv, 'a:' .. addr, attempt)
        end
        res = {'go', attempt}
        if n > 0 then
          local vals = redis.call('HMGET', run, unpack(ARGV, base + 1, base + n))
          for j = 1, n do res[j + 2] = vals[j] end
        end
      end
    end
  end
  out[#out + 1] = res
end
return out
