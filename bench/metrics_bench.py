#!/usr/bin/env python3
"""make bench-metrics: does scraping /metrics slow training? (docs/monitoring.md)

Alternates unscraped and scraped runs of the same training (simple_cnn on CIFAR-10, one
thread, pinned to CPU 0 with taskset); during a scraped run 16 clients pinned to CPU 1 GET
/metrics in a loop, and every response must be 200 and well-formed (HELP/TYPE before each
family, names and labels by Prometheus' rules, values that parse). Reports the training
images/s of each pair (from the epoch line), their ratio and the median ratio. A last run
is scraped while malformed clients hit the server: unknown paths, 64 KiB headers, and
slowloris clients that send one byte per second.

  python3 bench/metrics_bench.py --bin build/ctorch [--pairs 3] [--train-limit 40000] [--epochs 1]
"""
import argparse, http.client, os, re, socket, statistics, subprocess, sys, tempfile, threading, time

NAME = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*$')
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (\S+)$')


def well_formed(text):
    families = set()
    for line in text.split('\n')[:-1]:
        if line.startswith('# TYPE '):
            _, _, name, typ = line.split(' ')
            if not NAME.match(name) or typ not in ('gauge', 'counter', 'histogram'):
                return False
            families.add(name)
            continue
        if line.startswith('#'):
            continue
        m = SAMPLE.match(line)
        if not m:
            return False
        name = m.group(1)
        base = re.sub(r'_(bucket|sum|count)$', '', name)
        if name not in families and base not in families:
            return False
        float(m.group(5))
    return text.endswith('\n')


def train(args, extra, log):
    cmd = ['taskset', '-c', '0', args.bin, 'train', '--model', 'simple_cnn', '--dataset', 'cifar10',
           '--epochs', str(args.epochs), '--threads', '1', '--train-limit', str(args.train_limit), '--test-limit', '100',
           '--no-checkpoints', '--run-dir', tempfile.mkdtemp(prefix='ctorch-mbench-')] + extra
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)


def images_per_sec(path):
    """The mean of the run's epoch lines' img/s."""
    v = [float(x) for x in re.findall(r' (\d+) img/s', open(path).read())]
    return sum(v) / len(v) if v else None


def wait_trained(path, proc):
    """Until the run has trained (it then serves --metrics-linger seconds more)."""
    while proc.poll() is None and 'metrics: serving for' not in open(path).read():
        time.sleep(0.05)


def wait_port(path, proc):
    while proc.poll() is None:
        m = re.search(r'metrics: http://127.0.0.1:(\d+)/', open(path).read())
        if m:
            return int(m.group(1))
        time.sleep(0.02)
    return None


class Scrapers:
    def __init__(self, port, n):
        self.port, self.stop, self.ok, self.bad = port, False, 0, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop) for _ in range(n)]

    def loop(self):
        while not self.stop:
            try:
                c = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
                c.request('GET', '/metrics')
                r = c.getresponse()
                body = r.read().decode()
                c.close()
                good = r.status == 200 and well_formed(body)
            except (OSError, http.client.HTTPException) as e:
                if self.stop:
                    return
                good, body = False, repr(e)
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.bad.append(body[:200])

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        for t in self.threads:
            t.join()


def malformed(port, stop, counts):
    """Unknown paths, oversized headers and slowloris clients until stop is set."""
    def oversized():
        while not stop.is_set():
            try:
                s = socket.create_connection(('127.0.0.1', port), timeout=10)
                s.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 65536 + b'\r\n\r\n')
                reply = s.recv(64).split(b' ')
                key = 'oversized %s' % (reply[1].decode() if len(reply) > 1 else 'closed')
            except OSError:
                key = 'oversized closed'
            counts[key] = counts.get(key, 0) + 1
            try:
                s.close()
            except (OSError, NameError):
                pass
            time.sleep(0.05)

    def slowloris():
        s = socket.create_connection(('127.0.0.1', port), timeout=10)
        req = b'GET /metrics HTTP/1.1\r\nHost: x\r\n'
        i = 0
        while not stop.is_set():
            try:
                s.send(req[i % len(req):i % len(req) + 1])
            except OSError:
                counts['slowloris dropped'] = counts.get('slowloris dropped', 0) + 1
                s = socket.create_connection(('127.0.0.1', port), timeout=10)
            i += 1
            stop.wait(1.0)
        s.close()

    def unknown_loop():
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
                c.request('GET', '/no/such/path')
                key = 'unknown %d' % c.getresponse().status
                c.close()
            except (OSError, http.client.HTTPException):
                key = 'unknown failed'
            counts[key] = counts.get(key, 0) + 1
            time.sleep(0.01)

    ts = [threading.Thread(target=f) for f in [unknown_loop, oversized] + [slowloris] * 4]
    for t in ts:
        t.start()
    return ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--bin', default='build/ctorch')
    ap.add_argument('--pairs', type=int, default=int(os.environ.get('BENCH_PAIRS', 3)))
    ap.add_argument('--train-limit', type=int, default=int(os.environ.get('BENCH_TRAIN_LIMIT', 40000)))
    ap.add_argument('--epochs', type=int, default=int(os.environ.get('BENCH_EPOCHS', 1)),
                    help='epochs per run (a run of 2 epochs of 50000 images is scraped for about 45 s on a Zen 3 core)')
    ap.add_argument('--clients', type=int, default=16)
    args = ap.parse_args()
    if os.cpu_count() < 2:
        sys.exit('needs 2 CPUs (training on CPU 0, scrapers on CPU 1)')
    os.sched_setaffinity(0, {1})  # this process (the scrapers) on CPU 1
    cpu = re.search(r'model name\s*:\s*(.*)', open('/proc/cpuinfo').read())
    print('CPU: %s; training: simple_cnn cifar10, %d images, 1 thread on CPU 0; %d scrapers on CPU 1'
          % (cpu.group(1) if cpu else '?', args.train_limit, args.clients))
    ratios, bases, failures = [], [], 0
    logdir = tempfile.mkdtemp(prefix='ctorch-mbench-logs-')
    for i in range(args.pairs):
        base_log = os.path.join(logdir, 'base%d.log' % i)
        with open(base_log, 'w') as f:
            train(args, [], f).wait()
        base = images_per_sec(base_log)
        log = os.path.join(logdir, 'scraped%d.log' % i)
        with open(log, 'w') as f:
            p = train(args, ['--metrics-port', '0', '--metrics-linger', '2'], f)
            port = wait_port(log, p)
            with Scrapers(port, args.clients) as s:
                wait_trained(log, p)
            p.wait()
        scraped = images_per_sec(log)
        if not base or not scraped:
            print('pair %d: a run printed no img/s (see %s)' % (i + 1, logdir))
            failures += 1
            continue
        ratio = scraped / base
        ratios.append(ratio)
        bases.append(base)
        failures += len(s.bad)
        print('pair %d: unscraped %.0f img/s, scraped %.0f img/s (%d responses, %d bad), ratio %.4f'
              % (i + 1, base, scraped, s.ok, len(s.bad), ratio))
        for b in s.bad[:3]:
            print('   bad response:', b)
    if ratios:
        print('median ratio scraped/unscraped: %.4f' % statistics.median(ratios))
    # malformed clients during a scraped run
    log = os.path.join(logdir, 'malformed.log')
    counts, stop = {}, threading.Event()
    with open(log, 'w') as f:
        p = train(args, ['--metrics-port', '0', '--metrics-linger', '3'], f)
        port = wait_port(log, p)
        ts = malformed(port, stop, counts)
        with Scrapers(port, args.clients) as s:
            wait_trained(log, p)
        stop.set()
        for t in ts:
            t.join()
        rc = p.wait()
    failures += len(s.bad)
    mal = images_per_sec(log) or 0
    print('malformed clients during a scraped run: training exit %d, %.0f img/s (%.4f of the median '
          'unscraped run), %d good scrapes, %d bad; %s'
          % (rc, mal, mal / statistics.median(bases) if bases else 0, s.ok, len(s.bad),
             ', '.join('%s: %d' % kv for kv in sorted(counts.items()))))
    sys.exit(1 if failures or rc != 0 else 0)


if __name__ == '__main__':
    main()
