import signal
import sys

# Before the (slow) imports: SIGUSR1's default action would kill a server still starting.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

from .cli import main  # noqa: E402

sys.exit(main())
