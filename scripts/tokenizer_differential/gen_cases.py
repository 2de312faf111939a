# Differential cases from llama.cpp: random texts -> ids and decoded text.
import llama_cpp, ctypes, json, random, sys

def load(path):
    p = llama_cpp.llama_model_default_params(); p.vocab_only = True
    m = llama_cpp.llama_model_load_from_file(path.encode(), p)
    return m, llama_cpp.llama_model_get_vocab(m)

def tokenize(v, text, parse_special):
    b = text.encode('utf-8')
    n = len(b) + 16
    buf = (llama_cpp.llama_token * n)()
    r = llama_cpp.llama_tokenize(v, b, len(b), buf, n, False, parse_special)
    if r < 0:
        n = -r; buf = (llama_cpp.llama_token * n)()
        r = llama_cpp.llama_tokenize(v, b, len(b), buf, n, False, parse_special)
    return list(buf[:r])

def detok(v, ids, special):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    n = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(n)
        r = llama_cpp.llama_detokenize(v, arr, len(ids), buf, n, False, special)
        if r >= 0:
            return buf.raw[:r]
        n = -r + 1

ALPH = [
  "a","b","e","s","t","Z","Q","x"," ", " ", " ", "  ","\t","\n","\n\n","\r\n","\r","'","'s","'S","'t","'re","'VE","'ll","'d","'m","'x",
  "0","1","2","9","123","4567",".",",","!","?","-","_","(",")","[","]","{","}","<",">","=","+","$","^","~","|","`","@","#","%","&","*","/","\\",":",";","\"",
  "é","ñ","ß","À","Ω","ж","Ж","中","文","語","한","국","ก","ไ","م","ع","न","ि","्","\u0301","\u0308","ä","\u093f",
  "٣","۴","²","½","Ⅻ","①","〇","๓",
  "\u00a0","\u2000","\u3000","\u0085","\u1680","\u2028","\u202f","\u000b","\u000c",
  "🤖","🚀","👍🏽","😶‍🌫️","✅","❤️","\u200d","\ufe0f",
  "\u0000","\u0001","\u001f","\u007f","\u200b","\ufeff","\ue000","\u0378","\U000e0001","\U0001fbf0","\U00010fff",
  "！","，","。","、","…","—","“","”","‘","’","：","～",
  "ࠀ","一","龥","가","퟿","µ","ƻ",
]
SPECIALS = ["<|im_start|>","<|im_end|>","<|endoftext|>","</s>","<s>","<unk>","<|begin_of_text|>","<|eot_id|>","<|fim_pad|>","<|im_start","im_end|>","<repo_name>","<|start_header_id|>"]

def rand_cp(rng):
    while True:
        r = rng.random()
        if r < 0.5: c = rng.randint(0x80, 0x3000)
        elif r < 0.8: c = rng.randint(0x3000, 0x10000)
        else: c = rng.randint(0x10000, 0x10ffff)
        if not (0xd800 <= c <= 0xdfff): return chr(c)

def rand_text(rng):
    if WIDE and rng.random() < 0.7:
        return ''.join(rand_cp(rng) if rng.random() < 0.5 else rng.choice(" \n\t  a1'.sS\r") for _ in range(rng.randint(1, 20)))
    n = rng.randint(1, 14)
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.07: parts.append(rng.choice(SPECIALS))
        elif r < 0.3: parts.append(''.join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ") for _ in range(rng.randint(1,8))))
        else: parts.append(rng.choice(ALPH))
    return ''.join(parts)

WIDE = False
def main():
    global WIDE
    path, out, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != 'wide' else None
    WIDE = 'wide' in sys.argv[5:]
    rng = random.Random(seed)
    llama_cpp.llama_backend_init()
    m, v = load(path)
    texts = [rand_text(rng) for _ in range(count)]
    if extra:
        texts += open(extra, encoding='utf-8').read().split('\n@@@@\n')
    with open(out, 'w') as f:
        for t in texts:
            for ps in (False, True):
                ids = tokenize(v, t, ps)
                d0 = detok(v, ids, False); d1 = detok(v, ids, True)
                f.write(json.dumps({"text": t, "parse_special": ps, "ids": ids,
                    "decoded": d0.decode('utf-8', 'replace'), "decoded_special": d1.decode('utf-8','replace')}, ensure_ascii=False) + "\n")
        # pieces of every token
    n = llama_cpp.llama_vocab_n_tokens(v)
    with open(out + '.pieces', 'w') as f:
        for i in range(n):
            res = []
            for sp in (False, True):
                buf = ctypes.create_string_buffer(512)
                r = llama_cpp.llama_token_to_piece(v, i, buf, 512, 0, sp)
                res.append(buf.raw[:r].hex() if r >= 0 else "ERR")
            eog = llama_cpp.llama_vocab_is_eog(v, i); ctl = llama_cpp.llama_vocab_is_control(v, i)
            f.write(f"{i} {res[0]} {res[1]} {int(eog)} {int(ctl)}\n")
main()
