"""The Redis delivery log's layout and scripts: a time-sorted set searched by a bounded scan."""

# RediSearch is not assumed (plain Redis 6+), so the log is laid out for one kind of search:
# newest first, a few exact filters and a substring. `deliveries:log` is a sorted set scored by
# the record's time whose members are short search lines, "<id>\x1f<mailbox>\x1f<outcome>\x1f
# <,statuses,>\x1f<case-folded sender, subject, Message-ID>"; the full records are JSON in the
# hash `deliveries:records` by id. A search is a Lua script that walks the set newest first from
# a position, in chunks, matching lines with plain string.find, and stops after `budget` lines so
# that no single call holds Redis for long; the caller resumes from where it stopped. The outcome
# sets `deliveries:<outcome>` (ids by time) count the 24 h window.

from __future__ import annotations

import re
import uuid

from agent.store.base import DeliveryRecord

# Lines scanned by one script call at most (a few milliseconds of Redis time).
SCAN_BUDGET = 20_000
ID_LENGTH = 32
_SEPARATOR = "\x1f"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

# KEYS: log, records hash, the record's outcome index, then every outcome index.
# ARGV: at, line, id, record JSON, cutoff, max records.
APPEND = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
local function drop(lines)
  for _, line in ipairs(lines) do
    local id = string.sub(line, 1, 32)
    redis.call('HDEL', KEYS[2], id)
    for i = 4, #KEYS do redis.call('ZREM', KEYS[i], id) end
  end
end
local cutoff = '(' .. ARGV[5]
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  drop(old)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
end
for i = 4, #KEYS do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', cutoff) end
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[6])
if n > max then
  drop(redis.call('ZRANGE', KEYS[1], 0, n - max - 1))
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1)
end
return n
"""

# KEYS: log. ARGV: max score ('+inf' or a number, inclusive), tie id ('' or the id after which
# to go on among lines of exactly that score), min score ('-inf' or a number), mailbox, outcome,
# ',status,', q (case-folded), matches wanted, lines to scan at most.
# Returns {id, score, id, score, ...}, the score and id of the last line scanned, and 1 when the
# window was walked to its end, 0 when the budget or the wanted count stopped it.
# The walk is by rank between the ranks of max and min, so no line's score is read; plain finds
# reject most lines before one is split into its fields.
SEARCH = """
local key = KEYS[1]
local top, tie, bottom = ARGV[1], ARGV[2], ARGV[3]
local box, outcome, status, q = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local want, budget = tonumber(ARGV[8]), tonumber(ARGV[9])
local rank, ties = 0, 0
if top ~= '+inf' then
  rank = redis.call('ZCOUNT', key, '(' .. top, '+inf')
  if tie ~= '' then ties = redis.call('ZCOUNT', key, top, top) end
end
local stop = redis.call('ZCOUNT', key, bottom, '+inf')
local first = rank
local boxpat = box ~= '' and ('\\31' .. box .. '\\31') or nil
local outpat = outcome ~= '' and ('\\31' .. outcome .. '\\31') or nil
local found, scanned, last = {}, 0, nil
local function result(done)
  local last_score, last_id = '', ''
  if last then
    last_score = redis.call('ZSCORE', key, last)
    last_id = string.sub(last, 1, 32)
  end
  local flat = {}
  for _, line in ipairs(found) do
    flat[#flat + 1] = string.sub(line, 1, 32)
    flat[#flat + 1] = redis.call('ZSCORE', key, line)
  end
  return {flat, last_score, last_id, done}
end
while scanned < budget and rank < stop do
  local n = math.min(1000, budget - scanned, stop - rank)
  local lines = redis.call('ZREVRANGE', key, rank, rank + n - 1)
  if #lines == 0 then break end
  for i = 1, #lines do
    local line = lines[i]
    last = line
    if not (rank + i - 1 - first < ties and string.sub(line, 1, 32) >= tie)
       and (q == '' or string.find(line, q, 34, true))
       and (not boxpat or string.find(line, boxpat, 33, true) == 33)
       and (not outpat or string.find(line, outpat, 34, true))
       and (status == '' or string.find(line, status, 34, true)) then
      local _, _, lbox, lout, lstat, text =
        string.find(line, '^[^\\31]*\\31([^\\31]*)\\31([^\\31]*)\\31([^\\31]*)\\31(.*)$')
      if lbox and (box == '' or lbox == box) and (outcome == '' or lout == outcome)
         and (status == '' or string.find(lstat, status, 1, true))
         and (q == '' or string.find(text, q, 1, true)) then
        found[#found + 1] = line
        if #found >= want then return result(0) end
      end
    end
  end
  scanned = scanned + #lines
  rank = rank + #lines
end
return result(rank >= stop and 1 or 0)
"""


def new_id() -> str:
    """A record id: fixed length, so a line's id is its first ID_LENGTH characters."""
    return uuid.uuid4().hex


def search_line(record_id: str, record: DeliveryRecord) -> str:
    """The sorted-set member the search scans for this record."""
    statuses = "," + ",".join(record.link_statuses) + "," if record.links else ""
    fields = (record_id, record.mailbox, record.outcome, statuses, record.search_text)
    return _SEPARATOR.join(_UNSAFE.sub(" ", value) for value in fields)


def clean(value: str) -> str:
    """A search argument as the lines hold it (no separators or control characters)."""
    return _UNSAFE.sub(" ", value)
