import struct, sys
def rd(f, fmt):
    s = struct.calcsize(fmt); return struct.unpack('<'+fmt, f.read(s))[0]
def rstr(f):
    n = rd(f,'Q'); return f.read(n)
SC = {0:'B',1:'b',2:'H',3:'h',4:'I',5:'i',6:'f',7:'?',10:'Q',11:'q',12:'d'}
def val(f,t):
    if t in SC: return rd(f,SC[t])
    if t==8: return rstr(f)
    if t==9:
        et = rd(f,'I'); n = rd(f,'Q')
        return ('arr', et, [val(f,et) for _ in range(n)])
def load(path):
    f = open(path,'rb'); assert f.read(4)==b'GGUF'
    ver = rd(f,'I'); nt = rd(f,'Q'); nkv = rd(f,'Q')
    kv = {}
    for _ in range(nkv):
        k = rstr(f).decode(); t = rd(f,'I'); kv[k] = (t, val(f,t))
    return kv
if __name__ == '__main__':
    kv = load(sys.argv[1])
    for k,(t,v) in kv.items():
        if isinstance(v, tuple):
            print(k, 'array', v[1], len(v[2]), v[2][:5])
        else:
            print(k, t, v if not isinstance(v, bytes) or len(v) < 200 else v[:200])
