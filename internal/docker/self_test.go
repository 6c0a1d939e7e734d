package docker

import "testing"

func TestContainerIDFromMountinfo(t *testing.T) {
	const id = "3f4e1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
	tests := []struct {
		name, mountinfo, want string
	}{
		{"docker's hostname bind mount", "" +
			"1203 1185 0:161 / / rw,relatime master:612 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC\n" +
			"1216 1203 8:1 /var/lib/docker/containers/" + id + "/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw\n" +
			"1217 1203 8:1 /var/lib/docker/containers/" + id + "/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n", id},
		{"a data root elsewhere", "1217 1203 8:1 /srv/docker/containers/" + id + "/hosts /etc/hosts rw - ext4 /dev/sda1 rw\n", id},
		{"a volume under a containers dir is not the hostname file", "1217 1203 8:1 /var/lib/docker/containers/" + id + "/x /data rw - ext4 /dev/sda1 rw\n", ""},
		{"not a container ID", "1217 1203 8:1 /var/lib/docker/containers/abc/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n", ""},
		{"the runner's own machine", "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := containerIDFromMountinfo(tt.mountinfo); got != tt.want {
				t.Errorf("containerIDFromMountinfo = %q, want %q", got, tt.want)
			}
		})
	}
}
