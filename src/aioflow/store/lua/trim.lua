-- Trim acked entries off the stream, never at or above the oldest entry still
-- pending or not yet delivered. Answers the number of entries removed.
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', q) == 0 then return 0 end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', q)) do
  local m = fields_to_map(g)
  if m['name'] == GROUP then last = m['last-delivered-id'] end
end
if not last then return 0 end
local floor = last
local p = redis.call('XPENDING', q, GROUP)
if tonumber(p[1]) > 0 and older(p[2], floor) then floor = p[2] end
return redis.call('XTRIM', q, 'MINID', floor)
