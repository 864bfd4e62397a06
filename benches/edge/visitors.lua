-- wrk script of the load benchmark's visitors profile (HTTP/1.1 over TLS):
--   wrk -t1 -c50 -d10s --latency -s benches/edge/visitors.lua https://127.0.0.1:PORT/ -- CORPUS_DIR [SEED]
-- CORPUS_DIR is what benches/edge/make_corpus.py wrote. Each request takes the next client
-- address of clients.txt (as X-Forwarded-For: the server trusts it from 127.0.0.1), a user agent
-- and an Accept-Language value drawn by their weights, and a path from paths.txt at random: the
-- same draws as benches/loadgen makes for HTTP/2.

local clients, paths = {}, {}
local uas, ua_cum, ua_total = {}, {}, 0
local langs, lang_cum, lang_total = {}, {}, 0
local issued = 0

local function each_line(file, f)
  for line in io.lines(file) do
    if line ~= "" and line:sub(1, 1) ~= "#" then f(line) end
  end
end

local function weighted(file, values, cum)
  local total = 0
  each_line(file, function(line)
    local w, v = line:match("^(%d+)\t(.*)$")
    if w and tonumber(w) > 0 then
      total = total + tonumber(w)
      values[#values + 1] = v
      cum[#cum + 1] = total
    end
  end)
  return total
end

local function pick(values, cum, total)
  local x = math.random() * total
  local lo, hi = 1, #cum
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum[mid] <= x then lo = mid + 1 else hi = mid end
  end
  return values[lo]
end

function init(args)
  local dir = args[1] or error("visitors.lua needs the corpus directory: -- CORPUS_DIR")
  each_line(dir .. "/clients.txt", function(l) clients[#clients + 1] = l end)
  each_line(dir .. "/paths.txt", function(l) paths[#paths + 1] = l end)
  ua_total = weighted(dir .. "/user-agents.tsv", uas, ua_cum)
  lang_total = weighted(dir .. "/languages.tsv", langs, lang_cum)
  math.randomseed(tonumber(args[2] or "1"))
end

function request()
  local client = clients[issued % #clients + 1]
  issued = issued + 1
  local headers = {
    ["User-Agent"] = pick(uas, ua_cum, ua_total),
    ["Accept"] = "*/*",
    ["X-Forwarded-For"] = client,
  }
  local lang = pick(langs, lang_cum, lang_total)
  if lang ~= "" then headers["Accept-Language"] = lang end
  return wrk.format("GET", paths[math.random(#paths)], headers)
end
