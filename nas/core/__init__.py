"""What every stage leans on: files written atomically, locks, interrupts, the device a step runs on,
plugins, architectures named on the command line, and the agreement of two lists of figures."""
