"""The buffered access log: every line exactly once, across a fork and at exit, and soon without an exit."""

import select
import subprocess
import sys
import textwrap

from stack.topology import ROOT

LINE = 'accesslog.write("127.0.0.1", "GET", "/x", "HTTP/1.1", 200, 5, "{rid}", 0.001)'


def run_python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)


def test_each_line_is_written_once_across_a_fork_and_flushed_at_exit():
    proc = run_python(f"""
        import os
        from services.common import accesslog
        {LINE.format(rid="parent-before")}
        pid = os.fork()
        if pid == 0:
            {LINE.format(rid="child")}
            raise SystemExit(0)  # a normal exit: atexit flushes the child's buffer
        os.waitpid(pid, 0)
        {LINE.format(rid="parent-after")}
    """)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    for rid in ("parent-before", "child", "parent-after"):
        assert out.count(f"rid={rid} ") == 1, out
    assert '127.0.0.1 "GET /x HTTP/1.1" 200 5 rid=child rt=0.001000' in out


def test_a_line_reaches_stdout_within_the_flush_interval_while_the_process_runs():
    proc = run_python(f"""
        import time
        from services.common import accesslog
        {LINE.format(rid="early")}
        time.sleep(15)
    """)
    try:
        # The flusher writes every 0.5 s; 5 s is generous for a loaded machine and far below the 15 s after
        # which the exit flush would deliver the line even with the flusher thread broken.
        ready, _, _ = select.select([proc.stdout], [], [], 5)
        assert ready, "no line within 5 s: the flusher thread did not write it"
        assert "rid=early" in proc.stdout.readline()
        assert proc.poll() is None  # still asleep: the thread flushed it, not the exit
    finally:
        proc.kill()
        proc.wait()


def test_lines_from_several_threads_appear_once_each_and_whole_while_flushes_run():
    # Four threads write 5,000 lines each: the pending list fills past MAX_PENDING_LINES many times, so
    # request-side flushes race the flusher thread and one another.
    proc = run_python("""
        import threading
        from services.common import accesslog
        def lines(thread):
            for i in range(5000):
                accesslog.write("127.0.0.1", "GET", "/x", "HTTP/1.1", 200, 5, f"t{thread}-{i}", 0.001)
        threads = [threading.Thread(target=lines, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    """)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    rids = [line.split(" rid=")[1].split(" ")[0] for line in out.splitlines()]
    assert len(rids) == 20_000 and len(set(rids)) == 20_000
    assert all(line.endswith(" rt=0.001000") and '"GET /x HTTP/1.1" 200 5 ' in line for line in out.splitlines())
