"""A job that fetches a URL (argv[1]) with urllib and writes the body to
out.txt; on a socket error it prints `error errno=N` and exits 3."""
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
        body = r.read()
except urllib.error.URLError as e:
    err = e.reason
    print(f"error errno={getattr(err, 'errno', None)} {err}")
    sys.exit(3)
with open("out.txt", "wb") as f:
    f.write(body)
print(f"fetched {len(body)} bytes, status {r.status}")
