-- Extend the lease on messages this consumer still owns (resets their idle time).
-- ARGV: consumer, id...  Answers the ids no longer owned (reclaimed by someone else).
local consumer = ARGV[1]
local lost = {}
for j = 2, #ARGV do
  local p = redis.call('XPENDING', q, GROUP, ARGV[j], ARGV[j], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XCLAIM', q, GROUP, consumer, 0, ARGV[j], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[j]
  end
end
return lost
