"""bench.memory's arithmetic: smaps_rollup parsing and the shared/private split."""

from bench.memory import parse_rollup, usage

ROLLUP = """55d0c0a00000-7ffd1d1f5000 ---p 00000000 00:00 0                          [rollup]
Rss:              409600 kB
Pss:              153600 kB
Pss_Anon:          10240 kB
Shared_Clean:     307200 kB
Shared_Dirty:      20480 kB
Private_Clean:     10240 kB
Private_Dirty:     71680 kB
"""


def test_a_rollup_is_read_in_mib_with_its_shared_pages():
    u = parse_rollup(ROLLUP)
    assert (u.rss, u.pss, u.private) == (400.0, 150.0, 80.0)
    assert u.shared == 320.0  # Shared_Clean + Shared_Dirty


def test_this_process_can_be_read():
    u = usage(__import__("os").getpid())
    assert u.rss > 0 and 0 < u.pss <= u.rss and 0 <= u.private <= u.rss
