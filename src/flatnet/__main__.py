import sys

if sys.argv[1:2] == ["agent"]:  # the agent starts without the CLI framework
    from flatnet.agent.main import main as agent_main

    agent_main(sys.argv[2:])
else:
    from flatnet.cli import main

    main()
