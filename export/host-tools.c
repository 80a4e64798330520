/* Running the host's tools for the disk and ISO writers (mkfs.vfat, mtools, mkswap, xorriso,
 * qemu-img) with a fixed environment and their stderr as the error, and GRUB built into one
 * image by grub-mkimage. Below disk.c and iso.c, which both use it. */
#include "export/internal.h"

#include <fcntl.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

/* Everything GRUB needs is built into its images, so neither the ISO nor the ESP carries a
 * module directory. */
#define GRUB_MODULES                                                                               \
	"iso9660", "part_msdos", "part_gpt", "search", "search_fs_file", "configfile", "linux",    \
	    "normal", "echo", "test", "serial", "terminal", "ls", "cat", "gzio", "fat"

int export_run_tool(char *const argv[], const char *package, char *const env[],
                    struct mosaic_error *err)
{
	size_t n_env = 0, n_extra = 0;
	while (environ[n_env])
		n_env++;
	while (env && env[n_extra])
		n_extra++;
	_cleanup_free_ char **envp = xcalloc(n_env + n_extra + 4, sizeof(*envp));
	size_t k = 0;
	for (size_t i = 0; i < n_env; i++) {
		bool replaced = strncmp(environ[i], "MTOOLS_SKIP_CHECK=", 18) == 0 ||
		                strncmp(environ[i], "LC_ALL=", 7) == 0 ||
		                strncmp(environ[i], "TZ=", 3) == 0;
		for (size_t j = 0; j < n_extra && !replaced; j++) {
			size_t l = strchrnul(env[j], '=') - env[j];
			replaced = strncmp(environ[i], env[j], l + 1) == 0;
		}
		if (!replaced)
			envp[k++] = environ[i];
	}
	/* mtools otherwise refuses a FAT whose size does not match the file it is in; FAT
	 * keeps local times, so the zone is fixed for the bytes to be. */
	envp[k++] = "MTOOLS_SKIP_CHECK=1";
	envp[k++] = "LC_ALL=C";
	envp[k++] = "TZ=UTC";
	for (size_t j = 0; j < n_extra; j++)
		envp[k++] = env[j];

	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return mosaic_errorf(err, -errno, "pipe: %m");
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	pid_t pid;
	int e = posix_spawnp(&pid, argv[0], &fa, NULL, argv, envp);
	for (const char *const *dir = (const char *const[]){"/usr/sbin", "/sbin", NULL};
	     e == ENOENT && *dir && !strchr(argv[0], '/'); dir++) {
		_cleanup_free_ char *path = path_join(*dir, argv[0]);
		e = posix_spawn(&pid, path, &fa, NULL, argv, envp);
	}
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (e) {
		close(pipefd[0]);
		if (e == ENOENT)
			return mosaic_errorf(
			    err, -ENOENT,
			    "%s not found: install the package %s (apt-get install "
			    "%s)",
			    argv[0], package, package);
		return mosaic_errorf(err, -e, "running %s: %s", argv[0], strerror(e));
	}
	/* The end of the output says most: keep its last 2 KiB. */
	char out[2048], chunk[512];
	size_t len = 0;
	ssize_t n;
	while ((n = read(pipefd[0], chunk, sizeof(chunk))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		if (len + n > sizeof(out) - 1) {
			size_t drop = len + n - (sizeof(out) - 1);
			drop = drop > len ? len : drop;
			memmove(out, out + drop, len - drop);
			len -= drop;
		}
		size_t take = (size_t)n > sizeof(out) - 1 - len ? sizeof(out) - 1 - len : (size_t)n;
		memcpy(out + len, chunk + n - take, take);
		len += take;
	}
	out[len] = 0;
	close(pipefd[0]);
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	while (len > 0 && out[len - 1] == '\n')
		out[--len] = 0;
	return mosaic_errorf(err, -EIO, "%s failed: %s", argv[0], len ? out : "(no message)");
}

int export_convert(const char *raw, const char *fmt, const char *out, struct mosaic_error *err)
{
	char *argv[] = {"qemu-img", "convert",   "-q",        "-f",        "raw",
	                "-O",       (char *)fmt, (char *)raw, (char *)out, NULL};
	return export_run_tool(argv, "qemu-utils", NULL, err);
}

int export_grub_mkimage(const char *format, const char *early, const char *out,
                        const char *const extra[], size_t n_extra, struct mosaic_error *err)
{
	if (strcmp(format, "x86_64-efi") == 0 &&
	    access(EXPORT_GRUB_DIR "/x86_64-efi/linux.mod", R_OK) < 0)
		return mosaic_errorf(err, -ENOENT,
		                     "%s is missing: install the package grub-efi-amd64-bin "
		                     "(apt-get install grub-efi-amd64-bin)",
		                     EXPORT_GRUB_DIR "/x86_64-efi/linux.mod");
	const char *modules[] = {GRUB_MODULES};
	const char *head[] = {"grub-mkimage", "-O",  format, "-p", "/boot/grub",
	                      "-c",           early, "-o",   out};
	size_t n = ARRAY_SIZE(head) + ARRAY_SIZE(modules) + n_extra;
	_cleanup_free_ char **argv = xcalloc(n + 1, sizeof(*argv));
	size_t k = 0;
	for (size_t i = 0; i < ARRAY_SIZE(head); i++)
		argv[k++] = (char *)head[i];
	for (size_t i = 0; i < ARRAY_SIZE(modules); i++)
		argv[k++] = (char *)modules[i];
	for (size_t i = 0; i < n_extra; i++)
		argv[k++] = (char *)extra[i];
	return export_run_tool(argv, "grub-common", NULL, err);
}
