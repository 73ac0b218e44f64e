"""
mailplat's Sieve interpreter against Pigeonhole's `sieve-test` (Debian's
dovecot-sieve), which prints what a script would do with a message: for
each script x message case of the table, the actions we choose (folders
with their flags, redirect, reject, discard, keep) must equal its.

CI installs dovecot-sieve (.ci/run); without it these tests fail when
MAILPLAT_TEST_SIEVE_REQUIRED is set, and skip otherwise.
"""

import os
import shutil
import subprocess
import tempfile

from twisted.trial import unittest

from mailplat.sieve import SieveMessage, SieveSyntaxError, compile_script, outcome
from mailplat.sieve.core import Discard, FileInto, Keep, Redirect, Reject
from mailplat.sieve.vacation import Vacation

SIEVE_TEST = shutil.which("sieve-test") or "/usr/bin/sieve-test"

PLAIN = (
    b"Received: from a.example.org by b.example.org; Sun, 3 Mar 2024 23:59:00 -0800\n"
    b"Received: from c.example.org by a.example.org; Sun, 3 Mar 2024 23:58:00 -0800\n"
    b"From: Alice Example <alice@example.org>\n"
    b"To: Bob <bob@example.test>, carol@example.test\n"
    b"Cc: list@lists.example.net\n"
    b"Subject: Your invoice for March\n"
    b"Date: Mon, 4 Mar 2024 10:00:00 +0100\n"
    b"Message-ID: <m1@example.org>\n"
    b"X-Spam-Score: 7\n"
    b"List-Id: <news.lists.example.net>\n"
    b"\n"
    b"Hello Bob,\nplease find the invoice attached.\n"
)
ENCODED = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.de>\n"
    b"To: bob@example.test\n"
    b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgQmVybGlu?=\n"
    b"\n"
    b"body\n"
)
BIG = b"From: big@example.com\nTo: bob@example.test\nSubject: large\n\n" + b"x" * 20000 + b"\n"
MULTI = (
    b"From: shop@example.com\nTo: bob@example.test\nSubject: order\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/alternative; boundary="b"\n\n'
    b"--b\nContent-Type: text/plain; charset=utf-8\n\nYour order of a red bicycle\n"
    b"--b\nContent-Type: text/html\n\n<p>Your order</p>\n--b--\n"
)


def scored(spam=None, virus=None):
    """A message a check scored: X-Spam-Score / X-Spam-Max (and X-Virus-*) for sieve-test to read."""
    head = b"From: shop@example.com\nTo: bob@example.test\nSubject: offer\n"
    if spam is not None:
        head += b"X-Spam-Score: %s\nX-Spam-Max: %s\n" % tuple(str(v).encode() for v in spam)
    if virus is not None:
        head += b"X-Virus-Score: %s\nX-Virus-Max: %s\n" % tuple(str(v).encode() for v in virus)
    return head + b"\nbuy now\n"


# Pigeonhole reads the scores from those fields (sieve_spamtest_status_header, ...);
# mailplat is handed them by the checks (Envelope.scores): the table gives both the same.
SPAMTEST_SETTINGS = [
    "plugin/sieve_spamtest_status_type=score", "plugin/sieve_spamtest_status_header=X-Spam-Score",
    "plugin/sieve_spamtest_max_header=X-Spam-Max", "plugin/sieve_virustest_status_type=score",
    "plugin/sieve_virustest_status_header=X-Virus-Score", "plugin/sieve_virustest_max_header=X-Virus-Max",
]
SPAM_REQUIRE = 'require ["spamtest", "spamtestplus", "virustest", "fileinto", "variables", "relational", "comparator-i;ascii-numeric"]; '

ENV = ("sender@example.org", "bob+lists@example.test")

# (name, script, message)
CASES = [
    ("empty", "", PLAIN),
    ("keep", "keep;", PLAIN),
    ("discard", "discard;", PLAIN),
    ("stop-before-discard", "stop; discard;", PLAIN),
    ("fileinto", 'require "fileinto"; fileinto "Bills";', PLAIN),
    ("fileinto-inbox", 'require "fileinto"; fileinto "INBOX";', PLAIN),
    ("fileinto-twice", 'require "fileinto"; fileinto "A"; fileinto "A";', PLAIN),
    ("fileinto-copy", 'require ["fileinto", "copy"]; fileinto :copy "Bills";', PLAIN),
    ("fileinto-and-keep", 'require "fileinto"; fileinto "A"; keep;', PLAIN),
    ("redirect", 'redirect "other@example.net";', PLAIN),
    ("redirect-copy", 'require "copy"; redirect :copy "other@example.net";', PLAIN),
    ("reject", 'require "reject"; reject "not wanted";', PLAIN),
    ("header-contains", 'require "fileinto"; if header :contains "subject" "invoice" { fileinto "Bills"; }', PLAIN),
    ("header-contains-case", 'if header :contains "Subject" "INVOICE" { discard; }', PLAIN),
    ("header-is", 'if header :is "subject" "Your invoice for March" { discard; }', PLAIN),
    ("header-is-miss", 'if header :is "subject" "Your invoice" { discard; }', PLAIN),
    ("header-matches", 'if header :matches "subject" "*invoice*March" { discard; }', PLAIN),
    ("header-matches-q", 'if header :matches "subject" "Your ??voice*" { discard; }', PLAIN),
    ("header-octet", 'if header :comparator "i;octet" :contains "subject" "INVOICE" { discard; }', PLAIN),
    ("header-list", 'if header :contains ["x-nothing", "list-id"] ["foo", "news.lists"] { discard; }', PLAIN),
    ("header-encoded", 'require "fileinto"; if header :contains "subject" "Grüße" { fileinto "DE"; }', ENCODED),
    ("address-domain", 'if address :domain :is "from" "example.org" { discard; }', PLAIN),
    ("address-localpart", 'if address :localpart :is "to" "carol" { discard; }', PLAIN),
    ("address-all", 'if address :all :is "cc" "list@lists.example.net" { discard; }', PLAIN),
    ("address-matches", 'if address :domain :matches "cc" "*.example.net" { discard; }', PLAIN),
    ("address-encoded-name", 'if address :is "from" "juergen@example.de" { discard; }', ENCODED),
    ("envelope-from", 'require "envelope"; if envelope :domain :is "from" "example.org" { discard; }', PLAIN),
    ("envelope-to", 'require "envelope"; if envelope :localpart :is "to" "bob+lists" { discard; }', PLAIN),
    ("subaddress-user", 'require ["envelope", "subaddress"]; if envelope :user "to" "bob" { discard; }', PLAIN),
    ("subaddress-detail", 'require ["envelope", "subaddress", "fileinto"]; if envelope :detail "to" "lists" { fileinto "L"; }', PLAIN),
    ("subaddress-no-detail", 'require ["subaddress"]; if address :detail :matches "from" "*" { discard; }', PLAIN),
    ("subaddress-empty-user", 'require ["subaddress"]; if address :user "cc" "list" { discard; }', PLAIN),
    ("variables-set", 'require ["variables", "fileinto"]; set "box" "Archive"; fileinto "${box}";', PLAIN),
    ("variables-match", 'require ["variables", "fileinto"]; '
     'if header :matches "subject" "Your * for *" { fileinto "${1}-${2}"; }', PLAIN),
    ("variables-lower", 'require ["variables", "fileinto"]; set :lower :upperfirst "x" "HELLO"; fileinto "${x}";', PLAIN),
    ("variables-length", 'require ["variables", "fileinto"]; set :length "n" "abcd"; fileinto "n${n}";', PLAIN),
    ("variables-string", 'require "variables"; set "a" "one"; if string :is "${a}" "one" { discard; }', PLAIN),
    ("variables-unknown", 'require ["variables", "fileinto"]; fileinto "x${nothing}y";', PLAIN),
    ("variables-list-id", 'require ["variables", "fileinto"]; '
     'if header :matches "list-id" "*<*.lists.example.net>*" { fileinto "lists/${2}"; }', PLAIN),
    ("variables-quotewildcard", 'require ["variables"]; set :quotewildcard "p" "a*b"; '
     'if string :matches "a*b" "${p}" { discard; }', PLAIN),
    ("encoded-hex", 'require ["encoded-character", "fileinto"]; fileinto "${hex:42 69 6c 6c 73}";', PLAIN),
    ("encoded-unicode", 'require ["encoded-character", "fileinto"]; fileinto "${unicode:47 72 fc df 65}";', PLAIN),
    ("encoded-not", 'require ["encoded-character", "fileinto"]; fileinto "${hex:zz}";', PLAIN),
    ("exists", 'if exists ["from", "x-spam-score"] { discard; }', PLAIN),
    ("exists-miss", 'if exists ["from", "x-missing"] { discard; }', PLAIN),
    ("size-over", "if size :over 10K { discard; }", BIG),
    ("size-under", "if size :under 10K { discard; }", BIG),
    ("size-under-small", "if size :under 1K { discard; }", PLAIN),
    ("allof", 'if allof (header :contains "subject" "invoice", address :domain :is "from" "example.org") { discard; }', PLAIN),
    ("anyof", 'if anyof (header :contains "subject" "nothing", exists "cc") { discard; }', PLAIN),
    ("not", 'if not header :contains "subject" "invoice" { discard; }', PLAIN),
    ("elsif", 'require "fileinto"; if header :is "subject" "x" { fileinto "A"; } '
     'elsif header :contains "subject" "March" { fileinto "B"; } else { fileinto "C"; }', PLAIN),
    ("else", 'require "fileinto"; if false { fileinto "A"; } elsif false { fileinto "B"; } else { fileinto "C"; }', PLAIN),
    ("true-false", 'if true { if false { discard; } }', PLAIN),
    ("numeric", 'require ["relational", "comparator-i;ascii-numeric"]; '
     'if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }', PLAIN),
    ("numeric-lt", 'require ["relational", "comparator-i;ascii-numeric"]; '
     'if header :value "lt" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }', PLAIN),
    ("count", 'require ["relational", "comparator-i;ascii-numeric"]; if address :count "eq" :comparator "i;ascii-numeric" "to" "2" { discard; }', PLAIN),
    ("flags-keep", 'require "imap4flags"; addflag "\\\\Seen"; keep;', PLAIN),
    ("flags-implicit", 'require "imap4flags"; setflag ["\\\\Flagged", "$Work"];', PLAIN),
    ("flags-fileinto", 'require ["fileinto", "imap4flags"]; fileinto :flags "\\\\Answered" "A";', PLAIN),
    ("flags-remove", 'require ["fileinto", "imap4flags"]; setflag "\\\\Seen \\\\Flagged"; removeflag "\\\\Seen"; fileinto "A";', PLAIN),
    ("hasflag", 'require "imap4flags"; addflag "$Work"; if hasflag :is "$work" { discard; }', PLAIN),
    ("body-text", 'require "body"; if body :text :contains "red bicycle" { discard; }', MULTI),
    ("body-miss", 'require "body"; if body :contains "blue" { discard; }', MULTI),
    ("multiline", 'require "fileinto";\nif header :contains "subject" text:\ninvoice\n.\n { fileinto "T"; }', PLAIN),
    ("comments", '# a comment\n/* and\n another */ require "fileinto"; fileinto /* inline */ "C";', PLAIN),
    ("vacation", 'require "vacation"; vacation :days 3 "I am away";', PLAIN),
    ("vacation-and-fileinto", 'require ["vacation", "fileinto"]; vacation "away"; fileinto "Held";', PLAIN),
    ("vacation-seconds", 'require ["vacation", "vacation-seconds"]; vacation :seconds 3600 :subject "Out" "away";', PLAIN),
    ("vacation-in-branch", 'require "vacation"; if header :contains "subject" "nothing" { vacation "x"; }', PLAIN),
    ("refuse-vacation-seconds", 'require "vacation"; vacation :seconds 60 "away";', PLAIN),
    ("date-year", 'require "date"; if date :originalzone :is "date" "year" "2024" { discard; }', PLAIN),
    ("date-zone", 'require ["date", "fileinto", "variables"]; '
     'if date :zone "+0000" :matches "date" "time" "*" { fileinto "t${0}"; }', PLAIN),
    ("date-weekday", 'require ["date", "fileinto", "variables"]; '
     'if date :originalzone :matches "date" "weekday" "*" { fileinto "w${0}"; }', PLAIN),
    ("date-iso", 'require ["date", "fileinto", "variables"]; '
     'if date :zone "+0530" :matches "date" "iso8601" "*" { fileinto "${0}"; }', PLAIN),
    ("date-julian", 'require ["date", "fileinto", "variables"]; '
     'if date :zone "+0000" :matches "date" "julian" "*" { fileinto "j${0}"; }', PLAIN),
    ("date-zone-part", 'require ["date", "fileinto", "variables"]; '
     'if date :originalzone :matches "date" "zone" "*" { fileinto "z${0}"; }', PLAIN),
    ("date-received", 'require ["date", "fileinto", "variables"]; '
     'if date :originalzone :matches "received" "date" "*" { fileinto "r${0}"; }', PLAIN),
    ("date-relational", 'require ["date", "relational"]; if date :zone "+0000" :value "ge" "date" "hour" "09" { discard; }', PLAIN),
    ("currentdate", 'require ["date", "relational"]; if currentdate :value "ge" "year" "2024" { discard; }', PLAIN),
    ("index-header", 'require ["index", "fileinto", "variables"]; '
     'if header :index 2 :matches "received" "from *" { fileinto "${1}"; }', PLAIN),
    ("index-last", 'require ["index", "fileinto", "variables"]; '
     'if header :index 1 :last :matches "received" "from * by*" { fileinto "${1}"; }', PLAIN),
    ("index-address", 'require ["index"]; if address :index 1 :is "to" "carol@example.test" { discard; }', PLAIN),
    ("index-date", 'require ["index", "date", "fileinto", "variables"]; '
     'if date :index 1 :last :originalzone :matches "date" "time" "*" { fileinto "${0}"; }', PLAIN),
    ("refuse-index-missing", 'if header :index 1 "subject" "x" { discard; }', PLAIN),
    ("editheader-add", 'require ["editheader"]; addheader "X-Tag" "one"; if header :is "x-tag" "one" { discard; }', PLAIN),
    ("editheader-delete", 'require ["editheader"]; deleteheader "x-spam-score"; if exists "x-spam-score" { discard; }', PLAIN),
    ("editheader-delete-value", 'require ["editheader"]; addheader "X-A" "1"; addheader "X-A" "2"; '
     'deleteheader :is "x-a" "2"; if header :is "x-a" "2" { discard; }', PLAIN),
    ("editheader-index", 'require ["editheader", "index", "fileinto", "variables"]; addheader :last "X-B" "first"; '
     'addheader :last "X-B" "second"; deleteheader :index 1 "x-b"; if header :matches "x-b" "*" { fileinto "${0}"; }', PLAIN),
    ("editheader-protected", 'require ["editheader"]; deleteheader "received"; if exists "received" { discard; }', PLAIN),
    ("duplicate-first", 'require "duplicate"; if duplicate { discard; }', PLAIN),
    # Scripts both must refuse.
    ("refuse-unknown-require", 'require "no-such-extension"; keep;', PLAIN),
    ("refuse-missing-require", 'fileinto "A";', PLAIN),
    ("refuse-syntax", 'if header :is "a" "b" { keep; ', PLAIN),
    ("refuse-require-late", 'keep; require "fileinto";', PLAIN),
    ("refuse-else-alone", 'else { keep; }', PLAIN),
    ("refuse-unknown-test", 'if nosuchtest { keep; }', PLAIN),
    ("refuse-size-both", 'if size :over 1 :under 2 { keep; }', PLAIN),
    ("redirect-and-fileinto", 'require "fileinto"; redirect "a@example.net"; fileinto "Copy";', PLAIN),
    # spamtest, spamtestplus, virustest (RFC 5235): the score over the check's threshold.
    ("spamtest-scale", SPAM_REQUIRE + 'if spamtest :matches "*" { fileinto "s${0}"; }', scored(spam=(3.5, 5))),
    ("spamtest-percent", SPAM_REQUIRE + 'if spamtest :percent :matches "*" { fileinto "p${0}"; }', scored(spam=(3.5, 5))),
    ("spamtest-over-threshold", SPAM_REQUIRE + 'if spamtest :matches "*" { fileinto "s${0}"; } '
     'if spamtest :percent :matches "*" { fileinto "p${0}"; }', scored(spam=(12, 5))),
    ("spamtest-negative", SPAM_REQUIRE + 'if spamtest :matches "*" { fileinto "s${0}"; } '
     'if spamtest :percent :matches "*" { fileinto "p${0}"; }', scored(spam=(-2.5, 5))),
    ("spamtest-untested", SPAM_REQUIRE + 'if spamtest :is "0" { fileinto "Untested"; }', PLAIN),
    ("spamtest-numeric-ge", SPAM_REQUIRE + 'if spamtest :value "ge" :comparator "i;ascii-numeric" "7" { fileinto "Junk"; }',
     scored(spam=(3.5, 5))),
    ("spamtest-numeric-lt", SPAM_REQUIRE + 'if spamtest :value "lt" :comparator "i;ascii-numeric" "7" { fileinto "Junk"; }',
     scored(spam=(3.5, 5))),
    ("spamtest-default-comparator", SPAM_REQUIRE + 'if spamtest :value "ge" "3" { fileinto "Junk"; }', scored(spam=(12, 5))),
    ("spamtest-percent-count", SPAM_REQUIRE + 'if spamtest :percent :count "eq" :comparator "i;ascii-numeric" "1" '
     '{ fileinto "One"; }', scored(spam=(1, 5))),
    ("virustest-scale", SPAM_REQUIRE + 'if virustest :matches "*" { fileinto "v${0}"; }', scored(virus=(1, 4))),
    ("virustest-infected", SPAM_REQUIRE + 'if virustest :value "eq" :comparator "i;ascii-numeric" "5" { discard; }',
     scored(spam=(0, 5), virus=(9, 4))),
    ("virustest-untested", SPAM_REQUIRE + 'if virustest :is "0" { fileinto "Untested"; }', scored(spam=(1, 5))),
    ("refuse-percent-without-spamtestplus", 'require "spamtest"; if spamtest :percent "1" { keep; }', PLAIN),
    ("refuse-virustest-without-require", 'if virustest "1" { keep; }', PLAIN),
]


def sieve_test(script, message, workdir):
    """Pigeonhole's verdict: [(kind, folder or address, flags)] and the implicit keep's, normalised."""
    path = os.path.join(workdir, "s.sieve")
    with open(path, "w") as f:
        f.write(script)
    mail = os.path.join(workdir, "m.eml")
    with open(mail, "wb") as f:
        f.write(message)
    settings = [a for setting in SPAMTEST_SETTINGS for a in ("-o", setting)]
    args = [SIEVE_TEST, "-x", "+vacation-seconds +editheader +spamtest +spamtestplus +virustest", "-o", "mail_uid=nobody",
            "-o", "mail_gid=nogroup", *settings, "-f", ENV[0], "-r", ENV[1], path, mail]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if "final result: success" not in out.stderr + out.stdout:
        return "refused"
    actions, section = [], None
    for line in out.stdout.splitlines():
        text = line.strip()
        if text.startswith("Performed actions:"):
            section = "performed"
        elif text.startswith("Implicit keep:"):
            section = "implicit"
        elif text.startswith("* ") and section:
            body = text[2:]
            if body.startswith("store message in folder: "):
                actions.append(["store", body[len("store message in folder: "):], ()])
            elif body == "discard":
                actions.append(["discard", "", ()])
            elif body.startswith("redirect message to: "):
                actions.append(["redirect", body[len("redirect message to: "):].strip("<>"), ()])
            elif body.startswith("track duplicate"):
                continue  # duplicate's bookkeeping, not an action on the message
            elif body.startswith("send vacation message"):
                actions.append(["vacation", "", ()])
            elif body.startswith("reject message with reason: "):
                actions.append(["reject", body[len("reject message with reason: "):], ()])
            else:
                actions.append(["other", body, ()])
        elif text.startswith("+ add IMAP flags: ") and actions:
            actions[-1][2] = tuple(sorted(f.lower() for f in text[len("+ add IMAP flags: "):].split()))
    return [tuple(a) for a in actions]


def scores_of(message):
    """What a check would have recorded (mailplat.checks.record_score) for the fields sieve-test reads."""
    fields = SieveMessage(message)
    scores = {}
    for kind, name in (("spam", "x-spam"), ("virus", "x-virus")):
        score, top = fields.headers(name + "-score"), fields.headers(name + "-max")
        if score and top:
            scores[kind] = (float(score[0]), float(top[0]))
    return scores


def ours(script, message):
    try:
        script = compile_script(script)
    except SieveSyntaxError:
        return "refused"
    run = script.run(SieveMessage(message, *ENV), {"scores": scores_of(message)})
    out = []
    for action in outcome(run):
        if isinstance(action, (Keep, FileInto)):
            out.append(("store", action.folder, tuple(sorted(f.lower() for f in action.flags))))
        elif isinstance(action, Discard):
            out.append(("discard", "", ()))
        elif isinstance(action, Redirect):
            out.append(("redirect", action.address, ()))
        elif isinstance(action, Reject):
            out.append(("reject", action.reason, ()))
        elif isinstance(action, Vacation):
            out.append(("vacation", "", ()))
    return out


class Oracle(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(SIEVE_TEST):
            if os.environ.get("MAILPLAT_TEST_SIEVE_REQUIRED"):
                self.fail("sieve-test (Debian dovecot-sieve) is missing")
            raise unittest.SkipTest("sieve-test (Debian dovecot-sieve) not installed")
        self.workdir = tempfile.mkdtemp(prefix="mailplat-sieve-")
        os.chmod(self.workdir, 0o777)  # sieve-test runs as nobody and writes the compiled script beside it
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def test_table(self):
        self.assertGreaterEqual(len(CASES), 40)
        mismatches = []
        for name, script, message in CASES:
            expected, got = sieve_test(script, message, self.workdir), ours(script, message)
            if expected != "refused":
                expected = sorted(expected)
            if got != "refused":
                got = sorted(got)
            if expected != got:
                mismatches.append(f"{name}: sieve-test {expected} != ours {got}")
        self.assertEqual(mismatches, [])
