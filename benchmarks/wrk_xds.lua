-- wrk script of the repository benchmark (benchmarks/wrk.py runs it; see
-- benchmarks/README.md). Sends SOAP requests rendered from a template that
-- benchmarks/wrk.py built once with the product's client code, checks every answer,
-- and prints one JSON line with the results.
--
--   wrk -t<clients> -c<clients> -d<s> --timeout <s> -s wrk_xds.lua <url> \
--       -- <spec.lua> <nonce> <seed> <stagger ms>
--
-- spec.lua (written by benchmarks/wrk.py) returns a table:
--   head      request line and headers, each ending with CRLF, without Content-Length
--   blob      file holding the constant segments of the body, concatenated
--   segs      lengths of those segments (one more than slots)
--   slots     names of the values between them: MSGID and UUIDn (a fresh urn:uuid:),
--             NIR (a random patient), DE_UID / SS_UID (<uid_root>.<nonce + thread>.<n>.1
--             / .2, n counting the thread's requests),
--             SIZE (decimal size of the CDA: size_base + #NIR + #DE_UID), DOC_UID (a
--             random entry of uids)
--   patients, uids, uid_root, size_base
--   success   the text a good answer contains; min_body: its smallest length
-- A slot name that occurs several times takes the same value in one request.

local ffi = require("ffi")
ffi.cdef [[
int usleep(unsigned int usec);
typedef struct { long tv_sec; long tv_nsec; } wrk_xds_timespec;
int clock_gettime(int clock_id, wrk_xds_timespec *tp);
]]
local CLOCK_MONOTONIC, ts = 1, ffi.new("wrk_xds_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("tid", #threads)
end

-- per thread (each wrk thread has its own Lua state)
ok, bad, sample = 0, 0, nil
-- the latency of each answered request (µs, from the end of request() to response()),
-- as measured: wrk's own histogram is corrected for coordinated omission (a request that
-- took 40 times the mean also adds 39 requests "not sent" meanwhile), which in a closed
-- loop of one connection turns one stall into a raised mean and p99
latencies = {}
local sent_at
local spec, out, slots, nslots, const_len, nonce, n, cur, makers

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

local function hex(bits)
   return string.format("%0" .. (bits / 4) .. "x", math.random(0, 2 ^ bits - 1))
end

local function urn_uuid()
   -- RFC 4122 version 4 layout, like uuid.uuid4()
   return "urn:uuid:" .. hex(16) .. hex(16) .. "-" .. hex(16) .. "-4" .. hex(12) .. "-"
      .. string.format("%04x", 0x8000 + math.random(0, 0x3fff)) .. "-"
      .. hex(16) .. hex(16) .. hex(16)
end

local function base()
   return spec.uid_root .. "." .. nonce .. "." .. n
end
-- (nonce: the benchmark's, unique per run, + the thread number, so that threads differ)

makers = {
   MSGID = urn_uuid,
   NIR = function() return spec.patients[math.random(#spec.patients)] end,
   DE_UID = function() return base() .. ".1" end,
   SS_UID = function() return base() .. ".2" end,
   SIZE = function() return tostring(spec.size_base + #cur.NIR + #cur.DE_UID) end,
   DOC_UID = function() return spec.uids[math.random(#spec.uids)] end,
}

local function value(name)
   local v = cur[name]
   if v == nil then
      local make = makers[name]
      if make == nil and name:sub(1, 4) == "UUID" then make = urn_uuid end
      if name == "SIZE" then value("NIR"); value("DE_UID") end
      v = make()
      cur[name] = v
   end
   return v
end

function init(args)
   spec = dofile(args[1])
   nonce = tostring(tonumber(args[2]) + tid)
   math.randomseed(tonumber(args[3]) * 1000 + tid)
   local blob = read_file(spec.blob)
   slots, nslots = spec.slots, #spec.slots
   -- out = head, Content-Length value, CRLF CRLF, seg 1, slot 1, seg 2, ..., seg n+1
   out = { spec.head .. "Content-Length: ", "", "\r\n\r\n" }
   const_len, n = 0, 0
   local pos = 1
   for k, len in ipairs(spec.segs) do
      out[2 + 2 * k] = blob:sub(pos, pos + len - 1)
      pos = pos + len
      const_len = const_len + len
   end
   assert(pos == #blob + 1, "spec.segs do not add up to the blob")
   assert(#spec.segs == nslots + 1, "one more segment than slots expected")
   -- wrk starts this thread, which opens its connection at once, right after init():
   -- waiting here spaces the connections like independent clients' (opened together,
   -- they all land on the gunicorn worker that wins the accept race)
   local stagger = tonumber(args[4] or "0")
   if tid > 1 and stagger > 0 then ffi.C.usleep(stagger * 1000) end
   io.stderr:write("wrk-ready " .. tid .. "\n")
end

function request()
   n = n + 1
   cur = {}
   local len = const_len
   for k = 1, nslots do
      local v = value(slots[k])
      out[3 + 2 * k] = v
      len = len + #v
   end
   out[2] = tostring(len)
   local req = table.concat(out)
   sent_at = now_us()
   return req
end

local function describe(status, body)
   local codes, seen = {}, {}
   for code in body:gmatch('errorCode="([^"]*)"') do
      if not seen[code] then seen[code] = true; codes[#codes + 1] = code end
   end
   table.sort(codes)
   if #codes > 0 then
      return "HTTP " .. status .. ": " .. table.concat(codes, ", ")
   end
   return "HTTP " .. status .. ": " .. #body .. " bytes: " .. body:sub(1, 600)
end

function response(status, headers, body)
   if sent_at ~= nil then
      latencies[#latencies + 1] = now_us() - sent_at
      sent_at = nil
   end
   if status == 200 and #body >= spec.min_body and body:find(spec.success, 1, true) then
      ok = ok + 1
   else
      bad = bad + 1
      if sample == nil then sample = describe(status, body) end
   end
end

-- JSON of numbers, strings (bytes >= 0x80 as \u00XX: latin-1) and tables with string keys
local function json(v)
   local t = type(v)
   if t == "number" then
      if v ~= v then return "null" end
      return string.format("%.17g", v)
   elseif t == "string" then
      return '"' .. v:gsub('[%c"\\\128-\255]', function(c)
         return string.format("\\u%04x", c:byte())
      end) .. '"'
   elseif t == "table" then
      local parts = {}
      for k, x in pairs(v) do parts[#parts + 1] = json(tostring(k)) .. ":" .. json(x) end
      return "{" .. table.concat(parts, ",") .. "}"
   end
   return "null"
end

-- mean and percentiles (nearest rank) of the measured latencies
local function measured(all)
   table.sort(all)
   local n, sum = #all, 0
   for _, v in ipairs(all) do sum = sum + v end
   local function pct(p)
      if n == 0 then return 0 / 0 end
      return all[math.max(1, math.min(n, math.ceil(p / 100 * n)))]
   end
   return { count = n, mean = n > 0 and sum / n or 0 / 0, min = all[1] or 0 / 0,
            max = all[n] or 0 / 0, p50 = pct(50), p90 = pct(90), p99 = pct(99),
            p999 = pct(99.9) }
end

function done(summary, latency, requests)
   local good, errors, first, all = 0, 0, nil, {}
   for _, thread in ipairs(threads) do
      good = good + thread:get("ok")
      errors = errors + thread:get("bad")
      first = first or thread:get("sample")
      for _, v in ipairs(thread:get("latencies")) do all[#all + 1] = v end
   end
   local e = summary.errors
   io.write("WRK-RESULT ", json({
      requests = summary.requests, ok = good, bad = errors, sample = first,
      duration_us = summary.duration, bytes = summary.bytes,
      socket_errors = { connect = e.connect, read = e.read, write = e.write,
                        timeout = e.timeout },
      status_errors = e.status,
      latency_us = measured(all),
      -- wrk's histogram, corrected for coordinated omission (see ``latencies``)
      wrk_latency_us = { mean = latency.mean, stdev = latency.stdev, min = latency.min,
                         max = latency.max, p50 = latency:percentile(50),
                         p90 = latency:percentile(90), p99 = latency:percentile(99),
                         p999 = latency:percentile(99.9) },
   }), "\n")
end
