-- When a session closes by itself (docs/design.md "Session lifecycle"),
-- shared by the apply step and the close step, which run it on the same
-- state. `spec` is '' (sessions never close by themselves) or
-- 'lateness:idle:grace:max', milliseconds, 0 turning idle or max off.

local function parse_lifecycle(spec)
  if spec == nil or spec == '' then return nil end
  local lateness, idle, grace, max = string.match(spec, '^(%d+):(%d+):(%d+):(%d+)$')
  return {lateness = tonumber(lateness), idle = tonumber(idle), grace = tonumber(grace),
    max = tonumber(max)}
end

-- The session's close: when (ms, JetStream clock) and why, from its first
-- and latest arrival and the latest arrival of a SESSION_END; nil when
-- nothing closes it. On a tie `ended` wins, then `max_duration`.
local function close_due(lifecycle, first, last, ended)
  if lifecycle == nil then return nil, nil end
  local due, reason = nil, nil
  local function consider(at, why)
    if at and (due == nil or at < due) then due, reason = at, why end
  end
  if ended and last then consider(last + lifecycle.grace, 'ended') end
  if lifecycle.max > 0 and first then consider(first + lifecycle.max, 'max_duration') end
  if lifecycle.idle > 0 and last then consider(last + lifecycle.idle, 'idle') end
  return due, reason
end

