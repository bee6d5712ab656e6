-- Hand back messages this consumer holds but never started (a read that landed
-- while it was shutting down): re-add each as a fresh entry and ack the original,
-- so another worker gets it at once instead of after the visibility timeout.
-- ARGV: consumer, id...  Answers how many were handed back.
local consumer = ARGV[1]
local n = 0
for j = 2, #ARGV do
  local p = redis.call('XPENDING', q, GROUP, ARGV[j], ARGV[j], 1)
  if p[1] and p[1][2] == consumer then
    local e = redis.call('XRANGE', q, ARGV[j], ARGV[j])
    if e[1] then redis.call('XADD', q, '*', unpack(e[1][2])) end
    redis.call('XACK', q, GROUP, ARGV[j])
    n = n + 1
  end
end
return n
