"""
Sieve scripts that must be refused, each with the line and column of the
problem (what ManageSieve's PUTSCRIPT reports), and the limits that keep
a hostile script cheap: size, nesting, commands, steps and actions.
"""

from twisted.trial import unittest

from mailplat.sieve import SieveMessage, SieveRuntimeError, SieveSyntaxError, compile_script, engine, grammar, outcome
from mailplat.sieve.core import FileInto, Keep


def error_of(text):
    try:
        compile_script(text)
    except SieveSyntaxError as e:
        return e
    raise AssertionError(f"accepted: {text!r}")


class Refused(unittest.TestCase):
    def assertAt(self, text, line, column, words):
        e = error_of(text)
        self.assertEqual((e.line, e.column), (line, column), str(e))
        self.assertIn(words, e.message)

    def test_missing_semicolon(self):
        self.assertAt("keep\ndiscard;", 2, 1, "expected ';'")

    def test_unclosed_string(self):
        self.assertAt('require "fileinto";\nfileinto "abc;\n', 2, 10, "string not closed")

    def test_unclosed_comment(self):
        self.assertAt("keep; /* never\nends", 1, 7, "comment not closed")

    def test_unclosed_block(self):
        self.assertAt('if true {\n  keep;\n', 3, 1, "expected a command")

    def test_unknown_command(self):
        self.assertAt("keep;\n  frobnicate;", 2, 3, "unknown command 'frobnicate'")

    def test_unknown_extension(self):
        self.assertAt('require ["fileinto", "x-unknown"];', 1, 1, "unsupported extension")

    def test_extension_not_required(self):
        self.assertAt('\n\nfileinto "A";', 3, 1, 'needs require "fileinto"')

    def test_tag_of_another_extension(self):
        self.assertAt('require "fileinto";\nfileinto :copy "A";', 2, 1, ':copy needs require "copy"')

    def test_wrong_argument(self):
        self.assertAt("if size :over \"ten\" { keep; }", 1, 4, "expects a number")

    def test_two_match_types(self):
        self.assertAt('if header :is :contains "a" "b" { keep; }', 1, 4, "only one of")

    def test_test_where_a_command_goes(self):
        self.assertAt("true;", 1, 1, "is a test, not a command")

    def test_bad_redirect_address(self):
        self.assertAt('redirect "not an address";', 1, 1, "not a valid address")

    def test_not_utf8(self):
        e = error_of(b'keep;\n# caf\xe9\n')
        self.assertEqual(e.line, 2)

    def test_huge_script(self):
        e = error_of("#" * (grammar.MAX_SCRIPT + 1))
        self.assertIn("larger than", e.message)

    def test_deep_nesting(self):
        text = "if true { " * 40 + "keep;" + " }" * 40
        self.assertIn("nested deeper", error_of(text).message)

    def test_deep_test_nesting(self):
        text = "if " + "not " * 40 + "true { keep; }"
        self.assertIn("nested deeper", error_of(text).message)


class Accepted(unittest.TestCase):
    def run_script(self, text, data=b"Subject: s\n\nbody\n"):
        return outcome(compile_script(text).run(SieveMessage(data, "a@example.org", "b@example.test")))

    def test_multiline_and_dot_stuffing(self):
        actions = self.run_script('require "reject";\nreject text:\nline one\n..dot\n.\n;')
        self.assertEqual(actions[0].reason, "line one\n.dot\n")

    def test_escapes_in_quoted_strings(self):
        actions = self.run_script('require "fileinto"; fileinto "a\\"b\\\\c";')
        self.assertEqual(actions, [FileInto('a"b\\c')])

    def test_size_units(self):
        self.assertEqual(self.run_script("if size :under 1K { discard; }")[0].kind, "discard")

    def test_case_of_identifiers(self):
        self.assertEqual(self.run_script('REQUIRE "fileinto"; FileInto "A";'), [FileInto("A")])


class Limits(unittest.TestCase):
    def test_too_many_actions_keeps_the_message(self):
        text = 'require ["fileinto"];\n' + "".join(f'fileinto "F{i}";\n' for i in range(engine.MAX_ACTIONS + 5))
        script = compile_script(text)
        with self.assertRaises(SieveRuntimeError) as caught:
            script.run(SieveMessage(b"Subject: x\n\n", "", "b@example.test"))
        self.assertIn("actions", str(caught.exception))

    def test_too_many_steps(self):
        self.patch(engine, "MAX_STEPS", 50)
        text = "if anyof (" + ", ".join(["false"] * 60) + ") { discard; }"
        with self.assertRaises(SieveRuntimeError):
            compile_script(text).run(SieveMessage(b"Subject: x\n\n", "", "b@example.test"))

    def test_an_empty_script_keeps(self):
        self.assertEqual(outcome(compile_script("").run(SieveMessage(b"\n", "", "b@example.test"))), [Keep()])
