from diffmf_cli.cli.app import main

main()
