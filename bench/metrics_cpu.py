#!/usr/bin/env python3
"""The CPU time the /metrics server takes from training, immune to the VM's noise.

Starts one `ctorch train --metrics-port 0` (1 thread, pinned to CPU 0 like
bench/metrics_bench.py), scrapes /metrics with 16 clients on CPU 1 for --seconds, and
reads every thread's utime+stime from /proc/PID/task/TID/stat: the threads that exist only
with --metrics-port (libmicrohttpd's) against all of the process's threads. A thread at
SCHED_IDLE on the training's core can take from training at most the CPU time it used.

  python3 bench/metrics_cpu.py --bin build/ctorch [--seconds 60]
"""
import argparse, os, re, sys, tempfile, time
sys.path.insert(0, os.path.dirname(__file__))
import metrics_bench as mb


def threads(pid):
    out = {}
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            st = open('/proc/%d/task/%s/stat' % (pid, tid)).read()
            comm = open('/proc/%d/task/%s/comm' % (pid, tid)).read().strip()
        except OSError:
            continue
        f = st[st.rindex(')') + 2:].split()
        out[int(tid)] = (comm, (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--bin', default='build/ctorch')
    ap.add_argument('--seconds', type=float, default=60)
    ap.add_argument('--clients', type=int, default=16)
    args = ap.parse_args()
    args.epochs, args.train_limit = 20, 50000
    os.sched_setaffinity(0, {1})
    log = tempfile.mktemp(prefix='ctorch-mcpu-', suffix='.log')
    with open(log, 'w') as f:
        p = mb.train(args, ['--metrics-port', '0'], f)
        port = mb.wait_port(log, p)
        before = threads(p.pid)
        with mb.Scrapers(port, args.clients) as s:
            time.sleep(args.seconds)
            after = threads(p.pid)
        p.terminate()
        p.wait()
    total = sum(t for _, t in after.values()) - sum(t for _, t in before.values())
    print('%d scrapes in %.0f s, %d bad' % (s.ok, args.seconds, len(s.bad)))
    for tid, (comm, t) in sorted(after.items()):
        d = t - before.get(tid, (comm, 0))[1]
        print('  thread %-6d %-16s %7.2f s CPU (%5.2f%% of the process)' % (tid, comm, d, 100 * d / total))
    print('process: %.2f s CPU over %.0f s' % (total, args.seconds))


if __name__ == '__main__':
    main()
