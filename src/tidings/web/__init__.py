"""The web pages of tidings: the platform's dashboard (``tidings.web.dashboard``,
``mount_dashboard``) and the receiver's inbox (``tidings.web.inbox``,
``mount_inbox``). Server-rendered templates and a little hand-written JavaScript;
nothing to build.

Import the module you need: the inbox does not import the platform, nor the
dashboard the receiver.
"""
