from mudiff.cli import main

raise SystemExit(main())
