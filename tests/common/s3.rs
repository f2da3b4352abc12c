//! Placeholder: S3 endpoint fixture (rclone serve s3).
