"""twistd plugin: `twistd -n mailplat [--config FILE]`."""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "TOML configuration file (default: embedded defaults)"]]


def _log_file(twistd_options):
    """Where twistd would write its log (-l / --logfile, -n), for [log] format = "json"."""
    from twisted.python import logfile

    name = twistd_options.get("logfile") if twistd_options is not None else "-"
    if name == "-" or (not name and twistd_options.get("nodaemon")):
        return sys.stdout
    return logfile.LogFile.fromFullPath(name or "twistd.log")


@implementer(IServiceMaker, IPlugin)
class MailplatServiceMaker:
    tapname = "mailplat"
    description = "mailplat: SMTP, IMAP4 and POP3 over pluggable backends"
    options = Options

    def makeService(self, options):
        from mailplat import config as configuration
        from mailplat import oplog
        from mailplat.listeners import bind
        from mailplat.service import make_service

        try:
            config = configuration.load(options["config"])
            configuration.require_service(config)
            # Bind first: a port in use stops us before anything is created.
            bound = bind(config)
            try:
                top = make_service(config, bound=bound)
            except BaseException:
                for port, _ in bound.values():
                    port.stopListening()
                raise
        except configuration.ConfigError as e:
            sys.stderr.write(f"mailplat: configuration error: {e}\n")
            raise SystemExit(2)
        if config.log_format == "json":
            top.log_observer = oplog.json_observer(_log_file(getattr(options, "parent", None)))
        return top


serviceMaker = MailplatServiceMaker()
