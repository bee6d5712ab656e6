-- Adopt messages parked for this worker's version (see worker/parking.py): move each entry
-- still owned by the pseudo-consumer to this consumer. ARGV: pseudo, consumer, id...
-- Answers the adopted entries, as XCLAIM gives them.
local pseudo, consumer = ARGV[1], ARGV[2]
local out = {}
for j = 3, #ARGV do
  local p = redis.call('XPENDING', q, GROUP, ARGV[j], ARGV[j], 1)
  if p[1] and p[1][2] == pseudo then
    local e = redis.call('XCLAIM', q, GROUP, consumer, 0, ARGV[j])
    if e[1] then out[#out + 1] = e[1] else redis.call('XACK', q, GROUP, ARGV[j]) end
  end
end
if #redis.call('XPENDING', q, GROUP, '-', '+', 1, pseudo) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', q, GROUP, pseudo)
end
return out
