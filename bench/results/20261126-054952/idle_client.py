
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks, ok = [], 0
req = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"
# One request per connection, one connection at a time (so the proxy's pool to
# the upstream stays small), then every connection is kept open, idle.
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(req)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    ok += data.startswith(b"HTTP/1.1 200")
    socks.append(s)
print(ok, flush=True)
sys.stdin.readline()
