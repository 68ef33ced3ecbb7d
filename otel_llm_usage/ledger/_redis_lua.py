# SPDX-License-Identifier: Apache-2.0
"""The counter rules of ``_counting`` stated in Lua, one script per operation (one round trip each).

Each script's keys are those of one budget instance, which share a hash tag, so on a Redis Cluster
every script runs on one node. Amounts are (cost nano-units, tokens) pairs in hash fields ``c``/``t``.
"""

from __future__ import annotations

__all__ = ["ADD", "LEASE", "READ", "SETTLE", "SETTLE_HOLDER_READ", "SETTLE_READ", "TRY_RESERVE"]

# HINCRBY fails ("would overflow") past the signed 64-bit range; a failed script would fail every later
# replay of the same usage too. Saturate instead (Python clamps the arguments to that range first).
# set_field writes an in-flight value computed in doubles, clamped so HINCRBY can still add to it.
_SATURATING = """
local function incr(key, field, by)
  local r = redis.pcall('HINCRBY', key, field, by)
  if type(r) == 'table' and r.err then
    redis.call('HSET', key, field, tonumber(by) < 0 and '-9223372036854775808' or '9223372036854775807')
  end
end
local function set_field(key, field, x)
  redis.call('HSET', key, field, x >= 9.2e18 and '9223372036854775807' or string.format('%.0f', x))
end
"""

# A settlement's usage into the bucket KEYS[1]; ARGV[3..5] = actual cost, tokens, ttl ("" = keep).
_COUNT_USAGE = """
local function count_usage()
  incr(KEYS[1], 'c', ARGV[3])
  incr(KEYS[1], 't', ARGV[4])
  if ARGV[5] ~= '' then
    redis.call('EXPIRE', KEYS[1], ARGV[5])
    redis.call('EXPIRE', KEYS[2], ARGV[5])
  end
end
"""

# Reads KEYS[1..last] into raw (the exact strings) and sums them into c, t (doubles).
_SUM_KEYS = """
local function sum_keys(last, raw)
  local c, t = 0, 0
  for i = 1, last do
    local v = redis.call('HMGET', KEYS[i], 'c', 't')
    raw[2 * i - 1] = v[1] or '0'
    raw[2 * i] = v[2] or '0'
    c = c + (tonumber(v[1]) or 0)
    t = t + (tonumber(v[2]) or 0)
  end
  return c, t
end
"""

# KEYS = used keys..., inflight key (last). ARGV = reservation cost, tokens; limit cost, tokens ("" = no
# limit); ttl ("" = keep the key's TTL). Returns {admitted, used/inflight raw values as strings}: Python
# sums the raw strings so the amounts it reports are exact.
_TRY_RESERVE = _SATURATING + _SUM_KEYS + """
local n = #KEYS
local raw = {}
local c, t = sum_keys(n, raw)
local exhausted = (ARGV[3] ~= '' and c >= tonumber(ARGV[3])) or (ARGV[4] ~= '' and t >= tonumber(ARGV[4]))
if exhausted then
  return {0, raw}
end
incr(KEYS[n], 'c', ARGV[1])
incr(KEYS[n], 't', ARGV[2])
if ARGV[5] ~= '' then redis.call('EXPIRE', KEYS[n], ARGV[5]) end
return {1, raw}
"""

# KEYS = bucket, inflight. ARGV = reserved cost, tokens; actual cost, tokens; ttl ("" = keep).
# In-flight never goes below zero (a reservation released twice, or after its key expired).
_SETTLE = _SATURATING + _COUNT_USAGE + """
local v = redis.call('HMGET', KEYS[2], 'c', 't')
local c = (tonumber(v[1]) or 0) - tonumber(ARGV[1])
local t = (tonumber(v[2]) or 0) - tonumber(ARGV[2])
if c < 0 then c = 0 end
if t < 0 then t = 0 end
set_field(KEYS[2], 'c', c)
set_field(KEYS[2], 't', t)
count_usage()
return 1
"""

# The raw values of the used keys KEYS[first..] and then of the in-flight key KEYS[2].
_READ_WINDOW = """
local function read_window(first)
  local raw = {}
  local n = 0
  for i = first, #KEYS + 1 do
    local key = KEYS[i]
    if i == #KEYS + 1 then key = KEYS[2] end
    local v = redis.call('HMGET', key, 'c', 't')
    raw[2 * n + 1] = v[1] or '0'
    raw[2 * n + 2] = v[2] or '0'
    n = n + 1
  end
  return raw
end
"""

# _SETTLE then a read of the window, in one round trip. KEYS = bucket, inflight, used keys...;
# ARGV as _SETTLE. Returns the raw values of the used keys and then the in-flight key.
_SETTLE_READ = _READ_WINDOW + _SETTLE.replace("return 1", "return read_window(3)")

# KEYS = bucket. ARGV = cost, tokens, ttl ("" = keep).
_ADD = _SATURATING + """
incr(KEYS[1], 'c', ARGV[1])
incr(KEYS[1], 't', ARGV[2])
if ARGV[3] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# _counting._claim and _hold: holder leases live in a hash beside the in-flight key, one field per
# holder, "cost tokens expiry-ms" (expiry on the server's clock). claim(h, f, holder) takes expired
# holders' leases out of the in-flight values f = {c, t} (doubles) and returns what `holder` holds.
_HOLDERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function claim(h, f, holder)
  local mc, mt = 0, 0
  local all = redis.call('HGETALL', h)
  if #all == 0 then return mc, mt end
  local now = now_ms()
  for i = 1, #all, 2 do
    local hc, ht, hx = string.match(all[i + 1], '^(%S+) (%S+) (%S+)$')
    if tonumber(hx) <= now then
      f.c = math.max(f.c - tonumber(hc), 0)
      f.t = math.max(f.t - tonumber(ht), 0)
      f.changed = true
      redis.call('HDEL', h, all[i])
    elseif all[i] == holder then
      mc, mt = tonumber(hc), tonumber(ht)
    end
  end
  return mc, mt
end
local function hold(h, holder, mc, mt, ttl_ms, ttl)
  if mc <= 0 and mt <= 0 then
    redis.call('HDEL', h, holder)
  else
    redis.call('HSET', h, holder, string.format('%.0f %.0f %.0f', mc, mt, now_ms() + tonumber(ttl_ms)))
    if ttl ~= '' then redis.call('EXPIRE', h, ttl) end
  end
end
"""

# _counting.lease in one round trip. KEYS = used keys..., inflight key, holders hash (last). ARGV = need
# cost, tokens; release cost, tokens; share; limit cost, tokens ("" = no limit); ttl ("" = keep); holder
# id ("" = none), holder ttl ms. Returns {granted cost, granted tokens, raw used/inflight values
# (inflight after the release)} as strings.
_LEASE = _SATURATING + _SUM_KEYS + _HOLDERS + """
local n = #KEYS - 1
local h, holder = KEYS[n + 1], ARGV[9]
local raw = {}
local c, t = sum_keys(n - 1, raw)
local v = redis.call('HMGET', KEYS[n], 'c', 't')
local f = {c = tonumber(v[1]) or 0, t = tonumber(v[2]) or 0, changed = false}
local mc, mt = claim(h, f, holder)
local rc, rt = tonumber(ARGV[3]), tonumber(ARGV[4])
if holder ~= '' then rc, rt = math.min(rc, mc), math.min(rt, mt) end
if rc > 0 or rt > 0 then
  f.c, f.t, f.changed = math.max(f.c - rc, 0), math.max(f.t - rt, 0), true
  mc, mt = math.max(mc - rc, 0), math.max(mt - rt, 0)
end
raw[2 * n - 1] = f.changed and string.format('%.0f', f.c) or (v[1] or '0')
raw[2 * n] = f.changed and string.format('%.0f', f.t) or (v[2] or '0')
local share = tonumber(ARGV[5])
-- max(need, floor(remaining * share), 1) on a limited axis; need wins as its own string, so it stays exact.
local function grant(need, limit, total)
  if limit == '' then return '0' end
  local g = math.max(math.floor((tonumber(limit) - total) * share), 1)
  if tonumber(need) >= g then return need end
  return string.format('%.0f', g)
end
local gc, gt = '0', '0'
local exhausted = (ARGV[6] ~= '' and c + f.c >= tonumber(ARGV[6])) or (ARGV[7] ~= '' and t + f.t >= tonumber(ARGV[7]))
local nothing = share == 0 and ARGV[1] == '0' and ARGV[2] == '0'
if not exhausted and not nothing then
  gc = grant(ARGV[1], ARGV[6], c + f.c)
  gt = grant(ARGV[2], ARGV[7], t + f.t)
end
if f.changed then
  set_field(KEYS[n], 'c', f.c)
  set_field(KEYS[n], 't', f.t)
end
if gc ~= '0' then incr(KEYS[n], 'c', gc) end
if gt ~= '0' then incr(KEYS[n], 't', gt) end
if (f.changed or gc ~= '0' or gt ~= '0') and ARGV[8] ~= '' then redis.call('EXPIRE', KEYS[n], ARGV[8]) end
if holder ~= '' then hold(h, holder, mc + tonumber(gc), mt + tonumber(gt), ARGV[10], ARGV[8]) end
return {gc, gt, raw}
"""

# _counting.settle with a holder, then a read. KEYS = bucket, inflight, holders hash, used keys...;
# ARGV = reserved cost, tokens; actual cost, tokens; ttl ("" = keep); holder id, holder ttl ms.
# Returns the raw values of the used keys and then the in-flight key.
_SETTLE_HOLDER_READ = _SATURATING + _COUNT_USAGE + _HOLDERS + _READ_WINDOW + """
local h, holder = KEYS[3], ARGV[6]
local v = redis.call('HMGET', KEYS[2], 'c', 't')
local f = {c = tonumber(v[1]) or 0, t = tonumber(v[2]) or 0, changed = false}
local mc, mt = claim(h, f, holder)
local rc, rt = math.min(tonumber(ARGV[1]), mc), math.min(tonumber(ARGV[2]), mt)
set_field(KEYS[2], 'c', math.max(f.c - rc, 0))
set_field(KEYS[2], 't', math.max(f.t - rt, 0))
hold(h, holder, math.max(mc - rc, 0), math.max(mt - rt, 0), ARGV[7], ARGV[5])
count_usage()
return read_window(4)
"""

# KEYS = used keys..., inflight key (last). Returns the raw values, read atomically.
_READ = """
local raw = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'c', 't')
  raw[2 * i - 1] = v[1] or '0'
  raw[2 * i] = v[2] or '0'
end
return raw
"""

TRY_RESERVE, SETTLE, ADD, READ = _TRY_RESERVE, _SETTLE, _ADD, _READ
SETTLE_READ, LEASE, SETTLE_HOLDER_READ = _SETTLE_READ, _LEASE, _SETTLE_HOLDER_READ
