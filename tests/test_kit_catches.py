"""
The kit catches what breaks servers (issue 13 item 6): each broken plugin of
tests/kit_fixtures.py is run through the kit rule it breaks, and that rule
must fail with a message naming what is wrong; the good plugins (and the two
that the old server could not log in with: plain values and `async def`)
pass the same rules.

A kit test is run here on a fresh test case, the way trial runs it (setUp,
the test, the clean-ups), and its outcome inspected.
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests import kit_fixtures as fx


@defer.inlineCallbacks
def outcome(testcase, case_class, name, **attributes):
    """("pass" | "fail" | "skip" | "error", message) of one kit test."""
    case = type(f"{case_class.__name__}Under", (case_class,), attributes)(name)
    case._observer = testcase._observer  # flushLoggedErrors inside the kit test
    result = ("pass", "")
    try:
        yield defer.maybeDeferred(case.setUp)
        yield defer.maybeDeferred(getattr(case, name))
    except unittest.SkipTest as e:
        result = ("skip", str(e))
    except unittest.FailTest as e:
        result = ("fail", str(e))
    except Exception as e:
        result = ("error", f"{type(e).__name__}: {e}")
    finally:
        while case._cleanups:
            f, args, kwargs = case._cleanups.pop()
            try:
                yield defer.maybeDeferred(f, *args, **kwargs)
            except Exception:
                pass
    testcase.flushLoggedErrors()  # the broken plugins' own failures
    return result


class Catches(unittest.TestCase):
    """Each case: a broken plugin, the rule it breaks, words of the message."""

    @defer.inlineCallbacks
    def assertCaught(self, case_class, rule, words, **attributes):
        kind, message = yield outcome(self, case_class, rule, **attributes)
        self.assertEqual(kind, "fail", f"{rule} did not catch {attributes}: {kind} {message}")
        for word in words:
            self.assertIn(word, message)

    @defer.inlineCallbacks
    def assertPasses(self, case_class, rule, **attributes):
        kind, message = yield outcome(self, case_class, rule, **attributes)
        self.assertEqual(kind, "pass", f"{rule} refused a good plugin {attributes}: {message}")


class RealmRules(Catches):
    def realm(self, cls):
        return {"realm_class": cls}

    # -- the login rule: a realm answering plain values or from async def
    #    (every login failed before), and one the server cannot use.

    def test_a_realm_of_plain_values_logs_in_through_the_server(self):
        return self.assertPasses(fx.RealmCase, "test_logins_work_through_a_running_server",
                                 **self.realm(fx.PlainValueRealm))

    def test_an_async_def_realm_logs_in_through_the_server(self):
        return self.assertPasses(fx.RealmCase, "test_logins_work_through_a_running_server",
                                 **self.realm(fx.AsyncRealm))

    def test_a_realm_answering_a_user_object_fails_the_login_rule(self):
        return self.assertCaught(fx.RealmCase, "test_logins_work_through_a_running_server",
                                 ["through a running server failed", "imap", "pop3", "smtp"],
                                 **self.realm(fx.UserObjectRealm))

    # -- the rules the first kit missed

    def test_a_realm_blocking_the_reactor_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_no_call_blocks_the_reactor",
                                 ["check_password", "held the reactor", "never block the reactor"],
                                 **self.realm(fx.BlockingRealm))

    def test_a_realm_without_dummy_hash_timing_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_unknown_users_take_as_long_as_known_ones",
                                 ["unknown user", "dummy hash"], **self.realm(fx.NoDummyHashRealm))

    def test_an_admin_write_in_place_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_admin_writes_replace_the_file_whole",
                                 ["in place", "rename"], **self.realm(fx.InPlaceAdminRealm))

    def test_a_realm_not_seeing_its_own_admin_write_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_admin_writes_are_seen_by_the_next_lookup",
                                 ["not found by the next lookup"], **self.realm(fx.StaleCacheRealm))

    # -- rules the first kit had

    def test_a_wrong_password_accepted_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_wrong_password_is_refused_for_every_scheme",
                                 ["wrong PLAIN password accepted"], **self.realm(fx.AnyPasswordRealm))

    def test_a_case_sensitive_domain_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_lookup_is_case_insensitive_in_the_domain", ["None"],
                                 **self.realm(fx.CaseSensitiveRealm))

    def test_no_such_user_during_an_outage_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_unavailable_backend_fails_lookup_temporarily",
                                 ["answered lookup with None", "TemporaryFailure"], **self.realm(fx.NobodyWhenDownRealm))

    def test_an_unsorted_user_list_is_caught(self):
        return self.assertCaught(fx.RealmCase, "test_list_users_is_sorted_and_complete", ["alice"],
                                 **self.realm(fx.UnsortedRealm))

    @defer.inlineCallbacks
    def test_a_missing_method_is_caught(self):
        kind, message = yield outcome(self, fx.RealmCase, "test_realm_provides_the_interface",
                                      realm_class=fx.NoListRealm)
        self.assertIn(kind, ("fail", "error"))
        self.assertIn("list_users", message)

    # -- the good realm passes every new rule

    @defer.inlineCallbacks
    def test_the_good_realm_passes_the_new_rules(self):
        for rule in ("test_no_call_blocks_the_reactor", "test_unknown_users_take_as_long_as_known_ones",
                     "test_admin_writes_replace_the_file_whole", "test_admin_writes_are_seen_by_the_next_lookup"):
            yield self.assertPasses(fx.RealmCase, rule)


class DeliveryRules(Catches):
    def agent(self, cls):
        return {"agent_class": cls}

    # -- the rules the first kit missed

    def test_a_delivery_that_never_fsyncs_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_mail_and_its_directory_are_fsynced_before_deliver_fires",
                                 ["without fsyncing the message file"], **self.agent(fx.NoFsyncDelivery))

    def test_a_delivery_ignoring_the_checks_folder_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_a_checks_folder_is_honoured", ["was not honoured"],
                                 **self.agent(fx.IgnoresFolderDelivery))

    def test_a_delivery_ignoring_the_plus_tag_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_a_plus_tag_names_the_folder",
                                 ["plus tag", "was not honoured"], **self.agent(fx.IgnoresTagDelivery))

    def test_a_delivery_refusing_postmaster_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_postmaster_is_always_accepted",
                                 ["postmaster@example.test was refused", "RFC 5321 4.5.1"],
                                 **self.agent(fx.RefusesPostmasterDelivery))

    # -- rules the first kit had

    def test_a_delivery_writing_at_rcpt_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_nothing_is_delivered_before_deliver",
                                 ["delivered at add_recipient"], **self.agent(fx.EarlyDelivery))

    def test_a_delivery_making_two_copies_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_a_recipient_given_twice_gets_one_copy",
                                 ["expected one copy, found 2"], **self.agent(fx.DuplicatesDelivery))

    def test_a_delivery_accepting_anyone_is_caught(self):
        return self.assertCaught(fx.DeliveryCase, "test_unknown_user_is_refused_permanently_at_add_recipient",
                                 ["nobody@example.test", "was accepted"], **self.agent(fx.AcceptsAnyoneDelivery))

    def test_a_delivery_bouncing_on_an_outage_is_caught(self):
        return self.assertCaught(fx.DeliveryCase,
                                 "test_a_failed_delivery_fails_temporarily_and_leaves_nothing_delivered",
                                 ["PermanentFailure", "must be a TemporaryFailure"],
                                 **self.agent(fx.BouncesOnOutageDelivery))

    @defer.inlineCallbacks
    def test_the_good_delivery_passes_the_new_rules(self):
        for rule in ("test_mail_and_its_directory_are_fsynced_before_deliver_fires",
                     "test_a_checks_folder_is_honoured", "test_a_plus_tag_names_the_folder",
                     "test_postmaster_is_always_accepted"):
            yield self.assertPasses(fx.DeliveryCase, rule)


class CheckRules(Catches):
    def check(self, cls):
        return {"check_class": cls}

    def test_a_blocking_check_is_caught(self):
        return self.assertCaught(fx.CheckCase, "test_no_stage_blocks_the_reactor", ["data held the reactor"],
                                 **self.check(fx.BlockingCheck))

    def test_a_check_keeping_state_on_itself_is_caught(self):
        return self.assertCaught(fx.CheckCase, "test_two_sessions_do_not_share_state",
                                 ["a second session saw the first one's state"], **self.check(fx.StatefulCheck))

    def test_a_reject_with_a_4xx_code_is_caught(self):
        return self.assertCaught(fx.CheckCase, "test_refusals_use_codes_of_their_kind",
                                 ["a reject needs a 5xx code", "450"], **self.check(fx.WrongCodeCheck))

    def test_an_answer_that_is_no_verdict_is_caught(self):
        return self.assertCaught(fx.CheckCase, "test_every_stage_answers_a_verdict_or_none",
                                 ["data answered True"], **self.check(fx.NotAVerdictCheck))

    def test_a_check_accepting_where_it_promised_no_opinion_is_caught(self):
        return self.assertCaught(fx.CheckCase, "test_promised_verdicts_through_the_server_runner",
                                 ["promised no opinion (NEXT)"], **self.check(fx.AcceptsTooMuchCheck))

    def test_no_opinion_promised_and_kept_passes(self):
        """The first kit turned NEXT into the runner's ACCEPT and failed every check promising it."""
        return self.assertPasses(fx.CheckCase, "test_promised_verdicts_through_the_server_runner")
