"""The Lua scripts that write to Redis, and the one that reads a set's recent changes.

Each runs atomically on one tenant's hash slot (every key it names carries ``{tenant}``).
A script checks everything that could make it fail before its first write: Redis does not
undo the writes of a script that stops on an error.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CHANGES_SCRIPT", "SET_CHANGE_SCRIPT", "SET_REPLACE_SCRIPT", "WRITE_SCRIPT"]

# A set changed: its version goes up by one, the change is kept under that version in the
# set's change log (the last ``keep`` versions), and "tenant/set version" is published.
# A replacement is recorded as "*": a replica reads such a version in full.
_BUMP: Final = """
local function bump(sets, log, name, entry, keep, channel, tenant)
  local v = redis.call('HINCRBY', sets, name, 1)
  redis.call('HSET', log, tostring(v), entry)
  redis.call('HDEL', log, tostring(v - keep))
  redis.call('PUBLISH', channel, tenant .. '/' .. name .. ' ' .. v)
  return v
end
"""

# A set's values replaced by a staging key's (filled beforehand), or, with mode 'declare',
# the set created empty unless it exists. Equal contents (checked up to 10,000 values) are
# 'unchanged'. The old values are freed in the background (UNLINK), and the staging key's
# expiry is not carried over. Returns {name, state, version, size}.
_REPLACE: Final = (
    _BUMP
    + """
local function replace(sets, set, log, staging, name, mode, keep, channel, tenant)
  local raw = redis.call('HGET', sets, name)
  if mode == 'declare' then
    if raw then
      return {name, 'kept', tonumber(raw), redis.call('SCARD', set)}
    end
    return {name, 'applied', bump(sets, log, name, '*', keep, channel, tenant), 0}
  end
  local size = redis.call('SCARD', staging)
  -- pcall: a set key of the wrong type is replaced, not a reason to fail
  if raw and size <= 10000 and size == redis.pcall('SCARD', set)
     and (size == 0 or redis.call('SINTERCARD', 2, staging, set) == size) then
    redis.call('UNLINK', staging)
    return {name, 'unchanged', tonumber(raw), size}
  end
  redis.call('UNLINK', set)
  if size > 0 then
    redis.call('RENAME', staging, set)
    redis.call('PERSIST', set)
  end
  return {name, 'applied', bump(sets, log, name, '*', keep, channel, tenant), size}
end
local function bad_versions(sets, names)
  for _, name in ipairs(names) do
    local raw = redis.call('HGET', sets, name)
    if raw and not tonumber(raw) then
      return name
    end
  end
  return nil
end
"""
)

# KEYS: current, history, sets; then per DataSet: set, log, staging.
# ARGV: expected version ("" = any), op ("put" | "delete"), documents, digest, match,
# policies, now, keep, channel, tenant, log keep; then per DataSet: name, mode.
# Returns {status, version, sets}: status "ok", "unchanged", "conflict" (version = current)
# or "badset" (version = the name of a set whose stored version is not a number); sets: one
# {name, state, version, size} per DataSet, written with the record, published before it.
WRITE_SCRIPT: Final = (
    _REPLACE
    + """
local function drop_staging()
  for i = 6, #KEYS, 3 do
    redis.call('UNLINK', KEYS[i])
  end
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then
  drop_staging()
  return {'conflict', cur, {}}
end
local names = {}
for i = 12, #ARGV, 2 do
  names[#names + 1] = ARGV[i]
end
local bad = bad_versions(KEYS[3], names)
if bad then
  drop_staging()
  return {'badset', bad, {}}
end
local sets = {}
for i, name in ipairs(names) do
  local k = 4 + 3 * (i - 1)
  sets[i] = replace(KEYS[3], KEYS[k], KEYS[k + 1], KEYS[k + 2], name, ARGV[11 + 2 * i],
                    tonumber(ARGV[11]), ARGV[9], ARGV[10])
end
local old = redis.call('HMGET', KEYS[1], 'documents', 'digest', 'deleted')
local live = old[1] and old[3] ~= '1'
if ARGV[2] == 'put' and live and old[2] == ARGV[4] then
  return {'unchanged', cur, sets}
end
if ARGV[2] == 'delete' and not live then
  return {'unchanged', cur, sets}
end
local new = cur + 1
if live then
  redis.call('HSET', KEYS[2], tostring(cur), old[1])
end
if ARGV[2] == 'put' then
  redis.call('HSET', KEYS[1], 'version', new, 'documents', ARGV[3], 'digest', ARGV[4],
             'match', ARGV[5], 'policies', ARGV[6], 'deleted', '0', 'updated', ARGV[7])
else
  redis.call('HDEL', KEYS[1], 'documents', 'digest', 'match', 'policies')
  redis.call('HSET', KEYS[1], 'version', new, 'deleted', '1', 'updated', ARGV[7])
end
local keep = tonumber(ARGV[8])
if redis.call('HLEN', KEYS[2]) > keep then
  for _, v in ipairs(redis.call('HKEYS', KEYS[2])) do
    if tonumber(v) == nil or tonumber(v) < new - keep then
      redis.call('HDEL', KEYS[2], v)
    end
  end
end
redis.call('PUBLISH', ARGV[9], ARGV[10] .. ' ' .. new)
return {'ok', new, sets}
"""
)

# KEYS: current, sets, set, log, staging. ARGV: log keep, channel, tenant, name.
# ``data import``: the set replaced by the staging key, if the tenant exists.
# Returns {status, version, size}: "ok", "unchanged", "notenant" or "badversion".
SET_REPLACE_SCRIPT: Final = (
    _REPLACE
    + """
local state = redis.call('HGET', KEYS[1], 'deleted')
if state == false or state == '1' or bad_versions(KEYS[2], {ARGV[4]}) then
  redis.call('UNLINK', KEYS[5])
  return {(state == false or state == '1') and 'notenant' or 'badversion', 0, 0}
end
local r = replace(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[4], 'replace', tonumber(ARGV[1]),
                  ARGV[2], ARGV[3])
return {r[2] == 'unchanged' and 'unchanged' or 'ok', r[3], r[4]}
"""
)

# KEYS: current, sets, set, log. ARGV: op ("add" | "remove"), log entry (the change as
# JSON, or "*" when too large to keep), log keep, channel, tenant, name, values...
# ``data add`` / ``data remove``. Returns {status, version, size}: "ok", "unchanged",
# "notenant", "noset" (remove from a set that does not exist) or "badversion".
SET_CHANGE_SCRIPT: Final = (
    _BUMP
    + """
local state = redis.call('HGET', KEYS[1], 'deleted')
if state == false or state == '1' then
  return {'notenant', 0, 0}
end
local raw = redis.call('HGET', KEYS[2], ARGV[6])
if raw and not tonumber(raw) then
  return {'badversion', 0, 0}
end
if not raw and ARGV[1] == 'remove' then
  return {'noset', 0, 0}
end
local changed = 0
local command = ARGV[1] == 'add' and 'SADD' or 'SREM'
for i = 7, #ARGV, 4096 do
  changed = changed + redis.call(command, KEYS[3], unpack(ARGV, i, math.min(i + 4095, #ARGV)))
end
local size = redis.call('SCARD', KEYS[3])
if changed == 0 and raw then
  return {'unchanged', tonumber(raw), size}
end
return {'ok', bump(KEYS[2], KEYS[4], ARGV[6], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]), size}
"""
)

# KEYS: sets, log. ARGV: name, held version, most entries to return.
# A set's current version (as stored, nil when absent) and, when it is at most ARGV[3]
# versions ahead of the one held, the change log entries in between (nil where trimmed).
CHANGES_SCRIPT: Final = """#!lua flags=no-writes
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local out = {raw}
local v, held = tonumber(raw), tonumber(ARGV[2])
if v and v > held and v - held <= tonumber(ARGV[3]) then
  for i = held + 1, v do
    out[#out + 1] = redis.call('HGET', KEYS[2], tostring(i))
  end
end
return out
"""
