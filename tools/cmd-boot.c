/* mosaic boot: runs an exported disk or ISO image in qemu with a serial console, the way
 * `mkosi qemu` does, and optionally waits for a line on that console (what the boot tests use). */
#include "tools/cli.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static const char usage_boot[] =
    "Usage: mosaic boot IMAGE [--iso] [--bios] [--timeout S] [--expect TEXT] [--memory M]\n"
    "\n"
    "Boots IMAGE (a raw or qcow2 disk from mosaic export, or an ISO with --iso) in\n"
    "qemu-system-x86_64: KVM when /dev/kvm works, else TCG; UEFI with OVMF (a throwaway\n"
    "copy of its variables) unless --bios; the disk as virtio in snapshot mode (IMAGE is never\n"
    "written); the first serial port (ttyS0) on this terminal. Interactively, Ctrl-A X quits\n"
    "qemu. With --expect, --timeout or output that is not a terminal, the console is watched:\n"
    "a kernel panic, the EFI shell or a firmware finding nothing to boot stops qemu and fails.\n"
    "No qemu process outlives the command.\n"
    "\n"
    "      --iso           IMAGE is an ISO 9660 image: attach it as a CD-ROM\n"
    "      --bios          boot with the legacy BIOS (SeaBIOS) instead of UEFI\n"
    "      --timeout S     stop qemu after S seconds (and fail)\n"
    "      --expect TEXT   exit 0 as soon as a console line contains TEXT (qemu is stopped);\n"
    "                      fail if qemu stops first\n"
    "      --memory M      guest memory, as qemu's -m takes it (default 1G)\n"
    "  -h, --help          show this help\n"
    "\n"
    "Exit status: 0 TEXT seen (or, without --expect, the guest powered off), 1 failure or\n"
    "timeout, 2 bad usage or an IMAGE that is not an image.\n";

enum { OPT_ISO = 256, OPT_BIOS, OPT_TIMEOUT, OPT_EXPECT, OPT_MEMORY };

/* OVMF as Debian's package ovmf installs it: the 4 MiB build first (what bookworm's libvirt
 * and mkosi pick), then the old 2 MiB one. CODE and VARS must come from the same build. */
static const char *const ovmf_paths[][2] = {
    {"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
    {"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
};

/* Console text that means the boot has failed and waiting longer is pointless. */
static const struct {
	const char *text;
	const char *why;
} failures[] = {
    {"Kernel panic", "the kernel panicked"},
    {"Shell>", "the firmware fell into the EFI shell: it found nothing it could boot"},
    {"BdsDxe: No bootable option", "the firmware found no bootable option"},
    {"No bootable device", "the firmware found no bootable device"},
};

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *find_in_path(const char *name)
{
	const char *path = getenv("PATH");
	_cleanup_strv_ char **dirs = strv_split(path ? path : "/usr/bin:/bin", ":");
	for (char **d = dirs; d && *d; d++) {
		_cleanup_free_ char *p = path_join(*d, name);
		if (access(p, X_OK) == 0)
			return TAKE_PTR(p);
	}
	return NULL;
}

enum image_kind { IMAGE_RAW, IMAGE_QCOW2, IMAGE_ISO };

/* Looks at IMAGE's first bytes, so that a wrong file fails here with its name rather than as a
 * firmware that finds nothing to boot. Returns 0 or an exit code. */
static int check_image(const char *path, bool iso, enum image_kind *kind)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "mosaic: %s: %s\n", path, strerror(errno));
		return EXIT_FAIL;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		fprintf(stderr, "mosaic: %s: not an image file\n", path);
		return EXIT_USAGE;
	}
	/* The ISO 9660 primary volume descriptor is at 32 KiB: "\1CD001". */
	unsigned char b[0x8006] = {0};
	ssize_t n = pread(fd, b, sizeof(b), 0);
	if (n < 0) {
		fprintf(stderr, "mosaic: %s: %s\n", path, strerror(errno));
		return EXIT_FAIL;
	}
	bool is_iso = n >= 0x8006 && memcmp(b + 0x8001, "CD001", 5) == 0;
	if (iso) {
		if (!is_iso) {
			fprintf(stderr,
			        "mosaic: %s: not an ISO 9660 image (no CD001 volume descriptor)\n",
			        path);
			return EXIT_USAGE;
		}
		*kind = IMAGE_ISO;
		return 0;
	}
	if (n >= 4 && memcmp(b, "QFI\xfb", 4) == 0) {
		*kind = IMAGE_QCOW2;
		return 0;
	}
	/* Every bootable disk, GPT ones through their protective MBR, ends sector 0 with 55 AA. */
	if (n < 512 || b[510] != 0x55 || b[511] != 0xaa) {
		fprintf(stderr, "mosaic: %s: not a disk image (no MBR or GPT partition table)%s\n",
		        path, is_iso ? "; it is an ISO: give --iso" : "");
		return EXIT_USAGE;
	}
	*kind = IMAGE_RAW;
	return 0;
}

static int copy_file(const char *from, const char *to)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = read_file(from, 64 << 20, &data, &len);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	return write_all(fd, data, len);
}

struct argv_buf {
	char **v;
	size_t n;
};

static void argv_add(struct argv_buf *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void argv_add(struct argv_buf *a, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s;
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	a->v = xrealloc(a->v, (a->n + 2) * sizeof(*a->v));
	a->v[a->n++] = s;
	a->v[a->n] = NULL;
}

/* The qemu child: its own process group unless it shares the terminal (a background group
 * reading the tty would be stopped by SIGTTIN), killed when mosaic dies. */
/* Whether qemu can run a guest with KVM here. Some hosts have a /dev/kvm that opens while qemu
 * aborts as the first vCPU is reset ("failed to set MSR 0x10a", seen with nested KVM): qemu is
 * started once, stopped (-S) with its monitor on stdin, which says "quit" at once; it exits 0
 * in a fraction of a second where KVM works, and dies of SIGABRT where it does not. */
static bool kvm_works(const char *qemu)
{
	int in[2];
	if (pipe2(in, O_CLOEXEC) < 0)
		return false;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(in[0]);
		close(in[1]);
		return false;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		dup2(in[0], 0);
		dup2(null, 1);
		dup2(null, 2);
		char *argv[] = {
		    (char *)qemu, "-machine", "q35",         "-accel",          "kvm",
		    "-cpu",       "host",     "-nodefaults", "-no-user-config", "-display",
		    "none",       "-S",       "-monitor",    "stdio",           NULL};
		execv(qemu, argv);
		_exit(127);
	}
	close(in[0]);
	(void)!write(in[1], "quit\n", 5);
	close(in[1]);
	int status = 0;
	int64_t deadline = now_ms() + 20000;
	pid_t got;
	while ((got = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < deadline)
		usleep(20000);
	if (got == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		return false;
	}
	return got == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static _Noreturn void exec_qemu(char **argv, const char *tmpdir, bool interactive, int out_fd,
                                pid_t parent)
{
	if (!interactive)
		setpgid(0, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent) /* mosaic died before PDEATHSIG was armed */
		_exit(127);
	if (!interactive) {
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null < 0 || dup2(null, 0) < 0 || dup2(out_fd, 1) < 0)
			_exit(127);
	}
	/* snapshot=on puts its overlay in $TMPDIR: in the throwaway directory, gone afterwards. */
	setenv("TMPDIR", tmpdir, 1);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	execv(argv[0], argv);
	dprintf(2, "mosaic: %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

/* Watches the console: a line holding TEXT or one of the failures. The verdict waits for the
 * end of its line (or a moment), so that the whole line is on the terminal and in the log. */
struct watch {
	const char *expect;
	char line[8192];
	size_t len;
	int verdict; /* 0 none yet, 1 expected text seen, -1 a failure */
	const char *why;
	int64_t decided_at;
	bool line_done;
};

static void watch_check(struct watch *w)
{
	if (w->verdict)
		return;
	w->line[w->len] = '\0';
	if (w->expect && strstr(w->line, w->expect)) {
		w->verdict = 1;
	} else {
		for (size_t i = 0; i < ARRAY_SIZE(failures); i++)
			if (strstr(w->line, failures[i].text)) {
				w->verdict = -1;
				w->why = failures[i].why;
				break;
			}
	}
	if (w->verdict)
		w->decided_at = now_ms();
}

static void watch_feed(struct watch *w, const char *data, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (data[i] == '\n') {
			watch_check(w);
			if (w->verdict)
				w->line_done = true;
			w->len = 0;
			continue;
		}
		if (w->len == sizeof(w->line) - 1) {
			/* A very long line: keep its end, enough for any pattern to span. */
			size_t keep = 256;
			memmove(w->line, w->line + w->len - keep, keep);
			w->len = keep;
		}
		w->line[w->len++] = data[i];
	}
	watch_check(w);
}

/* Stops qemu's process group: SIGTERM first, so that qemu closes its files, then SIGKILL. */
static void stop_qemu(pid_t pid, bool own_group, int *wstatus, bool *reaped)
{
	if (*reaped)
		return;
	kill(own_group ? -pid : pid, SIGTERM);
	int64_t until = now_ms() + 5000;
	while (now_ms() < until) {
		pid_t w = waitpid(pid, wstatus, WNOHANG);
		if (w == pid) {
			*reaped = true;
			break;
		}
		usleep(20000);
	}
	kill(own_group ? -pid : pid, SIGKILL);
	if (!*reaped && waitpid(pid, wstatus, 0) == pid)
		*reaped = true;
}

int cmd_boot(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"iso", no_argument, NULL, OPT_ISO},
	    {"bios", no_argument, NULL, OPT_BIOS},
	    {"timeout", required_argument, NULL, OPT_TIMEOUT},
	    {"expect", required_argument, NULL, OPT_EXPECT},
	    {"memory", required_argument, NULL, OPT_MEMORY},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	bool iso = false, bios = false;
	unsigned long timeout = 0;
	const char *expect = NULL, *memory = "1G";
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 'h':
			fputs(usage_boot, stdout);
			return EXIT_OK;
		case OPT_ISO:
			iso = true;
			break;
		case OPT_BIOS:
			bios = true;
			break;
		case OPT_TIMEOUT:
			errno = 0;
			timeout = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end || timeout == 0 || timeout > 86400 ||
			    optarg[0] == '-')
				return cli_usage(usage_boot,
				                 "--timeout: '%s' is not a number of seconds "
				                 "(1 to 86400)",
				                 optarg);
			break;
		case OPT_EXPECT:
			if (!optarg[0] || strchr(optarg, '\n'))
				return cli_usage(usage_boot,
				                 "--expect: give text without line breaks");
			expect = optarg;
			break;
		case OPT_MEMORY:
			errno = 0;
			unsigned long long m = strtoull(optarg, &end, 10);
			if (errno || end == optarg || m == 0 || optarg[0] == '-' ||
			    (*end && (strchr("MGmg", *end) == NULL || end[1])))
				return cli_usage(usage_boot,
				                 "--memory: '%s' is not a size like 1G or 2048M",
				                 optarg);
			memory = optarg;
			break;
		default:
			return cli_usage(usage_boot, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind != 1)
		return cli_usage(usage_boot, "give one IMAGE");
	const char *image = argv[optind];

	enum image_kind kind;
	int r = check_image(image, iso, &kind);
	if (r)
		return r;
	_cleanup_free_ char *qemu = find_in_path("qemu-system-x86_64");
	if (!qemu) {
		fprintf(stderr, "mosaic: qemu-system-x86_64 not found; install the package "
		                "qemu-system-x86\n");
		return EXIT_FAIL;
	}
	const char *ovmf_code = NULL, *ovmf_vars = NULL;
	if (!bios) {
		for (size_t i = 0; i < ARRAY_SIZE(ovmf_paths) && !ovmf_code; i++)
			if (access(ovmf_paths[i][0], R_OK) == 0 &&
			    access(ovmf_paths[i][1], R_OK) == 0) {
				ovmf_code = ovmf_paths[i][0];
				ovmf_vars = ovmf_paths[i][1];
			}
		if (!ovmf_code) {
			fprintf(stderr,
			        "mosaic: no UEFI firmware (%s); install the package ovmf, or "
			        "boot with --bios\n",
			        ovmf_paths[0][0]);
			return EXIT_FAIL;
		}
	}
	/* KVM only when this user can open it (a /dev/kvm without access would make qemu fail)
	 * and qemu can really run a vCPU with it; else TCG, which is slower but always works. */
	int kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	bool kvm = kvm_fd >= 0;
	if (kvm_fd >= 0)
		close(kvm_fd);
	if (kvm && !kvm_works(qemu)) {
		fprintf(stderr, "mosaic: /dev/kvm opens but qemu cannot run a guest with it here; "
		                "using TCG\n");
		kvm = false;
	}

	const char *base = getenv("TMPDIR");
	_cleanup_free_ char *tmpdir =
	    path_join(base && base[0] ? base : "/var/tmp", "mosaic-boot-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		fprintf(stderr, "mosaic: %s: %s\n", tmpdir, strerror(errno));
		return EXIT_FAIL;
	}
	/* qemu's -drive splits its value at commas: a comma in the path is written twice. */
	_cleanup_free_ char *esc = xmalloc(2 * strlen(image) + 1);
	char *o = esc;
	for (const char *p = image; *p; p++) {
		*o++ = *p;
		if (*p == ',')
			*o++ = ',';
	}
	*o = '\0';
	struct argv_buf a = {0};
	bool interactive = !expect && !timeout && isatty(0) && isatty(1);
	int exit_code = EXIT_FAIL;
	int fds[2] = {-1, -1};
	pid_t pid = -1;
	bool reaped = false;
	int wstatus = 0;

	if (ovmf_vars) {
		_cleanup_free_ char *vars = path_join(tmpdir, "OVMF_VARS.fd");
		r = copy_file(ovmf_vars, vars);
		if (r < 0) {
			fprintf(stderr, "mosaic: copying %s: %s\n", ovmf_vars, strerror(-r));
			goto out;
		}
	}
	argv_add(&a, "%s", qemu);
	argv_add(&a, "-machine");
	/* graphics=off: SeaBIOS then writes to the serial port too (sercon) */
	argv_add(&a, "q35,graphics=off");
	argv_add(&a, "-accel");
	argv_add(&a, kvm ? "kvm" : "tcg");
	argv_add(&a, "-cpu");
	argv_add(&a, kvm ? "host" : "max");
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	argv_add(&a, "-smp");
	argv_add(&a, "%d", cpus >= 2 ? 2 : 1);
	argv_add(&a, "-m");
	argv_add(&a, "%s", memory);
	argv_add(&a, "-nodefaults");
	argv_add(&a, "-no-user-config");
	argv_add(&a, "-display");
	argv_add(&a, "none");
	/* The guest's entropy from the host: without it an early getrandom() can stall a TCG boot.
	 */
	argv_add(&a, "-device");
	argv_add(&a, "virtio-rng-pci");
	if (ovmf_code) {
		argv_add(&a, "-drive");
		argv_add(&a, "if=pflash,format=raw,unit=0,readonly=on,file=%s", ovmf_code);
		argv_add(&a, "-drive");
		argv_add(&a, "if=pflash,format=raw,unit=1,file=%s/OVMF_VARS.fd", tmpdir);
	}
	if (kind == IMAGE_ISO) {
		argv_add(&a, "-drive");
		argv_add(&a, "if=none,id=cd,media=cdrom,format=raw,readonly=on,file=%s", esc);
		argv_add(&a, "-device");
		argv_add(&a, "ide-cd,drive=cd,bootindex=1");
	} else {
		argv_add(&a, "-drive");
		argv_add(&a, "if=none,id=disk,format=%s,snapshot=on,file=%s",
		         kind == IMAGE_QCOW2 ? "qcow2" : "raw", esc);
		argv_add(&a, "-device");
		argv_add(&a, "virtio-blk-pci,drive=disk,bootindex=1");
	}
	if (interactive) {
		/* The serial port and the monitor share the terminal (Ctrl-A C switches, Ctrl-A X
		 * quits); signal=off hands Ctrl-C to the guest. */
		argv_add(&a, "-chardev");
		argv_add(&a, "stdio,id=console,mux=on,signal=off");
		argv_add(&a, "-serial");
		argv_add(&a, "chardev:console");
		argv_add(&a, "-mon");
		argv_add(&a, "console");
	} else {
		argv_add(&a, "-chardev");
		argv_add(&a, "stdio,id=console,signal=off");
		argv_add(&a, "-serial");
		argv_add(&a, "chardev:console");
		/* A guest that reboots (panic=N, a failed boot) ends qemu instead of looping. */
		argv_add(&a, "-no-reboot");
	}

	if (!interactive && pipe2(fds, O_CLOEXEC) < 0) {
		fprintf(stderr, "mosaic: pipe: %s\n", strerror(errno));
		goto out;
	}
	struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: poll returns EINTR */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* A closed output (| head) must not kill mosaic before it has stopped qemu. */
	signal(SIGPIPE, SIG_IGN);
	fprintf(stderr, "mosaic: booting %s (%s, %s)%s\n", image, bios ? "BIOS" : "UEFI",
	        kvm ? "KVM" : "TCG", interactive ? "; Ctrl-A X quits" : "");
	fflush(stdout);
	fflush(stderr);
	pid_t parent = getpid();
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "mosaic: fork: %s\n", strerror(errno));
		goto out;
	}
	if (pid == 0)
		exec_qemu(a.v, tmpdir, interactive, fds[1], parent);
	if (!interactive) {
		setpgid(pid, pid); /* both sides set it, so neither races the other */
		close(fds[1]);
		fds[1] = -1;
	}

	struct watch *w = xcalloc(1, sizeof(*w));
	w->expect = expect;
	int64_t deadline = timeout ? now_ms() + (int64_t)timeout * 1000 : 0;
	bool eof = interactive, timed_out = false;
	while (!got_signal) {
		if (w->verdict && (w->line_done || now_ms() - w->decided_at > 2000))
			break;
		if (deadline && now_ms() >= deadline) {
			timed_out = true;
			break;
		}
		if (waitpid(pid, &wstatus, WNOHANG) == pid) {
			reaped = true;
			/* qemu is gone, but what it wrote may still be in the pipe */
		}
		if (eof) {
			if (reaped)
				break;
			usleep(100000);
			continue;
		}
		struct pollfd p = {.fd = fds[0], .events = POLLIN};
		int pr = poll(&p, 1, 100);
		if (pr <= 0)
			continue;
		char buf[8192];
		ssize_t n = read(fds[0], buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			eof = true;
			continue;
		}
		(void)write_all(1, buf, (size_t)n); /* a closed output still gets watched */
		watch_feed(w, buf, (size_t)n);
	}
	bool exited_by_itself = reaped;
	stop_qemu(pid, !interactive, &wstatus, &reaped);
	if (interactive)
		fputs("\n", stdout);

	if (got_signal) {
		fprintf(stderr, "\nmosaic: %s: stopped qemu\n", strsignal(got_signal));
		exit_code = 128 + got_signal;
	} else if (w->verdict > 0) {
		fprintf(stderr, "\nmosaic: '%s' seen on the console; stopped qemu\n", expect);
		exit_code = EXIT_OK;
	} else if (w->verdict < 0) {
		fprintf(stderr, "\nmosaic: %s: %s; stopped qemu\n", image, w->why);
	} else if (timed_out) {
		if (expect)
			fprintf(stderr,
			        "\nmosaic: %s: no '%s' on the console within %lu s; stopped "
			        "qemu\n",
			        image, expect, timeout);
		else
			fprintf(stderr, "\nmosaic: %s: still running after %lu s; stopped qemu\n",
			        image, timeout);
	} else if (exited_by_itself) {
		bool ok = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
		if (!ok)
			fprintf(stderr, "\nmosaic: qemu failed (%s %d)\n",
			        WIFEXITED(wstatus) ? "exit status" : "signal",
			        WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : WTERMSIG(wstatus));
		else if (expect)
			fprintf(stderr,
			        "\nmosaic: %s: the guest stopped before '%s' was on the "
			        "console\n",
			        image, expect);
		exit_code = ok && !expect ? EXIT_OK : EXIT_FAIL;
	}
	free(w);

out:
	if (pid > 0)
		stop_qemu(pid, !interactive, &wstatus, &reaped);
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	strv_freev(a.v);
	rm_tree(tmpdir);
	return exit_code;
}
