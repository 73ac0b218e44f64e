"""twistd plugin: `twistd -n mailplat [--config FILE]`."""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "TOML configuration file (default: embedded defaults)"]]


@implementer(IServiceMaker, IPlugin)
class MailplatServiceMaker:
    tapname = "mailplat"
    description = "mailplat: SMTP, IMAP4 and POP3 over pluggable backends"
    options = Options

    def makeService(self, options):
        from mailplat import config as configuration
        from mailplat.service import make_service

        try:
            config = configuration.load(options["config"])
            return make_service(config)
        except configuration.ConfigError as e:
            sys.stderr.write(f"mailplat: configuration error: {e}\n")
            raise SystemExit(2)


serviceMaker = MailplatServiceMaker()
