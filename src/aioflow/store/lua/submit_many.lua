-- Create several runs of one partition at once, each as submit.lua creates one (no delay,
-- no callback). ARGV: now, options, hooks ('' or '1'), pinned version ('' = none), nentries,
-- entry..., then per run: uid, input, traceparent ('' = none). Keep in step with submit.lua.
-- Answers one character per run, in order: '1' created, '0' a run with this id existed.
local now, opts, hooks, version = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local last = 5 + tonumber(ARGV[5])
local out, index = {}, {}
for i = last + 1, #ARGV, 3 do
  local uid, input, tp = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local run = runkey(uid)
  if redis.call('EXISTS', run) == 1 then
    out[#out + 1] = '0'
  else
    local f = {'status', 'pending', 'created', now, 'input', input, 'opts', opts}
    if hooks == '1' then f[#f + 1] = 'hooks'; f[#f + 1] = '1' end
    if tp ~= '' then f[#f + 1] = 'tp'; f[#f + 1] = tp end
    if version ~= '' then f[#f + 1] = 'v'; f[#f + 1] = version end
    redis.call('HSET', run, unpack(f))
    index[#index + 1] = now
    index[#index + 1] = uid
    for j = 6, last do xadd(uid, ARGV[j], 'n', input) end
    out[#out + 1] = '1'
  end
end
if #index > 0 then redis.call('ZADD', pre .. ':i', unpack(index)) end
return table.concat(out)
