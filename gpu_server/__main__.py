from gpu_server.cli import main

main()
