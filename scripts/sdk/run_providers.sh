#!/usr/bin/env bash
# The hosted providers' official Python SDKs against baimo's mock providers, then the OpenAI and
# Anthropic SDKs against `baimo serve` with a channel to every mock (scripts/sdk/gateway_openai.py).
# Installs the SDKs from PyPI into .venv-providers (google-generativeai 0.1.0, the last with
# PaLM, into .venv-palm; anthropic 0.125.0, the last with Text Completions, into
# .venv-anthropic-legacy); used by .ci/run.
#
#   scripts/sdk/run_providers.sh [path/to/baimo]
set -euo pipefail
cd "$(dirname "$0")/../.."
baimo=${1:-target/release/baimo}
venv=.venv-providers
palm=.venv-palm
legacy=.venv-anthropic-legacy
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check openai==3.63.0 anthropic==2.17.0 google-genai==3.6.1 qianfan==0.4.12.3 dashscope==2.0.2 \
    zhipuai==2.1.5.20250825 spark-ai-python==0.4.5 \
    langchain-openai==1.8.1 langchain-anthropic==1.7.10
if [ ! -x "$palm/bin/python" ]; then python3 -m venv "$palm"; fi
"$palm/bin/pip" install -q --disable-pip-version-check "google-generativeai==0.1.0"
# Anthropic's Text Completions (`client.completions`) left the SDK at 1.0: the last release with it.
if [ ! -x "$legacy/bin/python" ]; then python3 -m venv "$legacy"; fi
"$legacy/bin/pip" install -q --disable-pip-version-check "anthropic==0.125.0"

pids=()
logs=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$logs"' EXIT

# start NAME ARGS...: runs `baimo ARGS` in the background and sets $url to where it listens.
start() {
    local name=$1; shift
    "$baimo" "$@" 2>"$logs/$name" &
    pids+=($!)
    for _ in $(seq 100); do
        grep -q "listening on" "$logs/$name" && break
        sleep 0.1
    done
    url=$(sed -n 's/^listening on //p' "$logs/$name" | head -1)
    [ -n "$url" ] || { echo "$name did not start:"; cat "$logs/$name"; exit 1; }
}

py=$venv/bin/python
declare -A base
mock() { # mock KIND KEY [SECRET [APP_ID]]
    local kind=$1 key=$2 secret=${3:-} app=${4:-}
    local args=(mock-provider "$kind" --port 0 --key "$key")
    if [ -n "$secret" ]; then args+=(--secret "$secret"); fi
    if [ -n "$app" ]; then args+=(--app-id "$app"); fi
    start "mock-$kind" "${args[@]}"
    base[$kind]=$url
}

mock openai sk-oa-1
mock anthropic sk-ant-2
mock anthropic-legacy sk-ant-legacy-15
mock gemini AIza-gem-3
mock palm AIza-palm-4
mock ernie ak-ernie-5 sk-ernie-5
mock ernie-v2 bce-v3/ALTAK-6/x
mock spark spark-key-7 spark-secret-7 app7
mock spark-http spark-pass-8
mock dashscope sk-ds-9
mock dashscope-compatible sk-dsc-10
mock zhipu zp11.zhipusecret11
mock zhipu-v3 zp12.zhipusecret12
mock baichuan sk-bc-13 bc-secret-13
mock baichuan-legacy bc-legacy-14 bc-legacy-secret-14

echo "== each provider's own SDK against its mock"
"$py" scripts/sdk/mock_gemini.py "${base[gemini]}" AIza-gem-3
"$palm/bin/python" scripts/sdk/mock_palm.py "${base[palm]}" AIza-palm-4
"$legacy/bin/python" scripts/sdk/mock_anthropic_legacy.py "${base[anthropic-legacy]}" sk-ant-legacy-15
"$py" scripts/sdk/mock_ernie.py "${base[ernie]}" ak-ernie-5 sk-ernie-5
"$py" scripts/sdk/mock_spark.py "${base[spark]}" spark-key-7 spark-secret-7 app7
"$py" scripts/sdk/mock_dashscope.py "${base[dashscope]}" sk-ds-9
"$py" scripts/sdk/mock_zhipu.py "${base[zhipu]}" zp11.zhipusecret11
"$py" scripts/sdk/mock_baichuan.py "${base[baichuan]}" sk-bc-13 bc-secret-13

echo "== the OpenAI and Anthropic SDKs against baimo serve, one channel per provider"
config=$logs/gateway.toml
echo "local = false" > "$config"
channel() { # channel KIND KEY MODEL [SECRET [APP_ID]]
    local kind=$1 key=$2 model=$3 secret=${4:-} app=${5:-} url=${base[$1]}
    if [ "$kind" = spark ]; then url=${url/http:/ws:}; fi
    {
        echo "[[channels]]"
        echo "name = \"$kind\""
        echo "provider = \"$kind\""
        echo "base_url = \"$url\""
        echo "api_key = \"$key\""
        echo "models = [\"via-$kind\"]"
        echo "model_map = { \"via-$kind\" = \"$model\" }"
        if [ -n "$secret" ]; then echo "secret_key = \"$secret\""; fi
        if [ -n "$app" ]; then echo "app_id = \"$app\""; fi
    } >> "$config"
}
channel openai sk-oa-1 gpt-4
channel anthropic sk-ant-2 claude-2
channel anthropic-legacy sk-ant-legacy-15 claude-2.1
channel gemini AIza-gem-3 gemini-pro
channel palm AIza-palm-4 chat-bison-001
channel ernie ak-ernie-5 ernie-bot-4 sk-ernie-5
channel ernie-v2 bce-v3/ALTAK-6/x ernie-4.0-8k
channel spark spark-key-7 spark-3.5 spark-secret-7 app7
channel spark-http spark-pass-8 generalv3.5
channel dashscope sk-ds-9 qwen-max
channel dashscope-compatible sk-dsc-10 qwen-plus
channel zhipu zp11.zhipusecret11 glm-4
channel zhipu-v3 zp12.zhipusecret12 chatglm_turbo
channel baichuan sk-bc-13 Baichuan2-Turbo
channel baichuan-legacy bc-legacy-14 Baichuan2-53B bc-legacy-secret-14
# For the retry checks: wrong upstream credentials, and an account out of quota.
start mock-broke mock-provider openai --port 0 --key sk-broke-16
broke=$url
curl -sf "$broke/_mock/faults" -H 'content-type: application/json' \
    -d '{"always": {"type": "status", "status": 429, "code": "insufficient_quota"}}' >/dev/null
printf '[[channels]]\nname = "bad"\nprovider = "openai"\nbase_url = "%s"\napi_key = "sk-wrong"\nmodels = ["bad-openai"]\n' \
    "${base[openai]}" >> "$config"
printf '[[channels]]\nname = "broke"\nprovider = "openai"\nbase_url = "%s"\napi_key = "sk-broke-16"\nmodels = ["broke-openai"]\n' \
    "$broke" >> "$config"
start gateway serve --config "$config" --port 0 -q
"$py" scripts/sdk/gateway_openai.py "$url" via-openai via-anthropic via-gemini via-ernie via-ernie-v2 \
    via-spark via-spark-http via-dashscope via-dashscope-compatible via-zhipu via-baichuan \
    --no-tools via-anthropic-legacy --no-tools via-palm --no-tools via-zhipu-v3 --no-tools via-baichuan-legacy

echo "== permanent failures are tried once by the SDKs' default retry settings"
"$py" scripts/sdk/sdk_retries.py "$url" "bad-openai=${base[openai]}" "broke-openai=$broke"

echo "== agent clients (SDKs and LangChain: tools, results, structured output) through the gateway"
"$py" scripts/sdk/agents.py "$url" via-openai via-anthropic --prompts 20
