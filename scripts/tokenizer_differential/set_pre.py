import struct, sys
sys.path.insert(0, __import__('os').path.dirname(__file__))
from ggufmeta import rd, rstr, val
def wstr(b): return struct.pack('<Q', len(b)) + b
SC = {0:'B',1:'b',2:'H',3:'h',4:'I',5:'i',6:'f',7:'?',10:'Q',11:'q',12:'d'}
def wval(t, v):
    if t in SC: return struct.pack('<'+SC[t], v)
    if t == 8: return wstr(v)
    _, et, items = v
    return struct.pack('<IQ', et, len(items)) + b''.join(wval(et, x) for x in items)
src, dst = sys.argv[1], sys.argv[2]
sets = dict(a.split('=',1) for a in sys.argv[3:])
f = open(src,'rb'); assert f.read(4)==b'GGUF'
ver = rd(f,'I'); nt = rd(f,'Q'); nkv = rd(f,'Q'); assert nt == 0
kv = []
for _ in range(nkv):
    k = rstr(f).decode(); t = rd(f,'I'); kv.append([k, t, val(f,t)])
for k, v in sets.items():
    if v.startswith('bool:'): t, v = 7, v == 'bool:true'
    else: t, v = 8, v.encode()
    for e in kv:
        if e[0] == k: e[1] = t; e[2] = v; break
    else: kv.append([k, t, v])
out = b'GGUF' + struct.pack('<IQQ', ver, 0, len(kv))
for k, t, v in kv: out += wstr(k.encode()) + struct.pack('<I', t) + wval(t, v)
open(dst,'wb').write(out)
