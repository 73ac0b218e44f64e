"""
The cost of Sieve at delivery (issue 14's bar: at least 85% of the plain
run's throughput).

Runs benchmarks/smtp_deliver.py's MX delivery twice, taking turns
`--repeat` times: once plain, once with a 30-rule script active for every
sink user (header, address, envelope, size and body tests, fileinto into
folders that exist, a variable or two), and compares the fastest runs.

    python benchmarks/sieve_deliver.py                      # 2000 msgs, 20 conns, reuse mode
    python benchmarks/sieve_deliver.py --mode connect --repeat 5
    python benchmarks/smtp_deliver.py --sieve              # the same, from the SMTP benchmark (connect mode)

It prints msgs/s, p50/p99 latency and server CPU per message of each, the
ratio, and the cost of the script per message.
"""

import argparse
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import smtp_deliver  # noqa: E402  (the shared harness)

FOLDERS = ["Lists", "Bills", "Work", "Family", "Shopping", "Travel", "News", "Social"]

RULES = """require ["fileinto", "envelope", "body", "variables", "relational", "comparator-i;ascii-numeric"];
if header :contains "subject" "invoice" { fileinto "Bills"; stop; }
if header :contains "subject" ["receipt", "order confirmation", "your order"] { fileinto "Shopping"; stop; }
if address :domain :is "from" ["airline.example", "hotel.example", "trains.example"] { fileinto "Travel"; stop; }
if header :matches "list-id" "*<*>*" { set "list" "${2}"; fileinto "Lists"; stop; }
if exists "list-unsubscribe" { fileinto "Lists"; stop; }
if address :is "from" ["mum@family.example", "dad@family.example"] { fileinto "Family"; stop; }
if address :domain :matches "from" "*.work.example" { fileinto "Work"; stop; }
if header :contains "x-mailer" "newsletter" { fileinto "News"; stop; }
if envelope :domain :is "from" "social.example" { fileinto "Social"; stop; }
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "10" { discard; stop; }
if size :over 5M { fileinto "Work"; stop; }
if header :is "precedence" ["bulk", "junk"] { fileinto "News"; stop; }
if anyof (header :contains "subject" "webinar", header :contains "subject" "unsubscribe") { fileinto "News"; stop; }
if allof (address :localpart :is "to" "boss", header :contains "subject" "urgent") { fileinto "Work"; stop; }
if header :contains "from" "noreply" { fileinto "News"; stop; }
if address :domain :is "from" "bank.example" { fileinto "Bills"; stop; }
if header :matches "subject" "Re: *meeting*" { fileinto "Work"; stop; }
if header :contains "subject" ["flight", "boarding pass", "itinerary"] { fileinto "Travel"; stop; }
if address :domain :is "from" ["shop.example", "store.example", "market.example"] { fileinto "Shopping"; stop; }
if header :contains "subject" "photos" { fileinto "Family"; stop; }
if header :contains "subject" ["sale", "discount", "% off"] { fileinto "Shopping"; stop; }
if body :contains "unsubscribe from this list" { fileinto "Lists"; stop; }
if body :contains ["wire transfer", "gift card"] { discard; stop; }
if header :contains "subject" "[JIRA]" { fileinto "Work"; stop; }
if address :is "to" "all-staff@work.example" { fileinto "Work"; stop; }
if header :contains "x-github-reason" "mention" { fileinto "Work"; stop; }
if header :contains "subject" "newsletter" { fileinto "News"; stop; }
if address :domain :is "from" ["friends.example", "club.example"] { fileinto "Social"; stop; }
if header :matches "subject" "*message 7*" { fileinto "Lists"; stop; }
if header :matches "subject" "*message 3" { fileinto "Bills"; stop; }
"""


def install_scripts(state):
    """For every sink user: the folders the rules file into, and the active script."""
    for n in range(10):
        home = os.path.join(state, "home", "example.test", f"user{n}")
        os.makedirs(os.path.join(home, "sieve"), exist_ok=True)
        with open(os.path.join(home, "sieve", "rules.sieve"), "w") as f:
            f.write(RULES)
        os.symlink(os.path.join("sieve", "rules.sieve"), os.path.join(home, ".dovecot.sieve"))
        maildir = os.path.join(state, "mail", "example.test", f"user{n}")
        for folder in FOLDERS:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(maildir, "." + folder, sub), exist_ok=True)


def compare(args, sizes):
    """
    The plain MX and the MX with the 30-rule script, `args.repeat` times in
    turns; prints the fastest of each and their ratio. @return: exit status
    (1 when the bar is missed).
    """
    assert RULES.count("\nif ") == 30
    messages = [(i, smtp_deliver.make_message(i, size), "bench@remote.test") for i, size in enumerate(sizes)]
    plain = smtp_deliver.Run(args, messages, extra="[sieve]\nenabled = false\n")
    sieve = smtp_deliver.Run(args, messages, setup=install_scripts)
    best = {}
    for _ in range(args.repeat):
        for label, run in (("MX, no Sieve", plain), ("MX, 30-rule Sieve script", sieve)):
            profile = getattr(args, "profile", None) if run is sieve else None
            result = run.go(label, profile=profile)
            if label not in best or result.rate > best[label].rate:
                best[label] = result
    print(f"mode {args.mode}; {args.messages} messages (20% 100 KB) over {args.connections} connections; "
          f"the fastest of {args.repeat} runs each; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':28} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/msg':>18}")
    for run in best.values():
        lat = run.latencies
        print(f"{run.label:<28} {run.rate:8.0f} {lat[len(lat) // 2] * 1000:8.1f} "
              f"{lat[int(len(lat) * 0.99)] * 1000:8.1f} {run.cpu_ms():18.2f}")
    base, other = best["MX, no Sieve"], best["MX, 30-rule Sieve script"]
    ratio = other.rate / base.rate
    print(f"sieve / plain                 {ratio * 100:.1f}% (bar 85%: {'met' if ratio >= 0.85 else 'MISSED'}); "
          f"cost per message {(1 / other.rate - 1 / base.rate) * 1000:.2f} ms wall (1/rate difference), "
          f"{other.cpu_ms() - base.cpu_ms():.2f} ms server CPU")
    return 0 if ratio >= 0.85 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--mode", choices=("connect", "reuse", "pipelined"), default="reuse")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", metavar="FILE", help="run the server with the script under cProfile, stats to FILE")
    args = ap.parse_args()
    args.aliases = 0
    rng = random.Random(args.seed)
    sizes = [100 * 1024 if rng.random() < 0.2 else 4 * 1024 for _ in range(args.messages)]
    return compare(args, sizes)


if __name__ == "__main__":
    sys.exit(main())
