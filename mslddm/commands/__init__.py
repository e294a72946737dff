"""Sub-commands of the ``mslddm`` command line (see ``mslddm.cli``)."""
