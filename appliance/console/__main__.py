from appliance.console.cli import main

raise SystemExit(main())
